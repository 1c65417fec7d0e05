"""Diffusion Transformer (DiT) blocks with adaLN-Zero timestep conditioning.

Peebles and Xie, "Scalable Diffusion Models with Transformers", ICCV 2023. We follow the design of
the authors' public repository (facebookresearch/DiT): patchify by a strided convolution, fixed 2-D
sine-cosine position embeddings, a sinusoidal timestep embedding followed by a two-layer MLP, blocks
whose LayerNorms are modulated by shift/scale/gate vectors regressed from the timestep embedding
(the regressors start at zero, so every block starts as the identity: "adaLN-Zero"), a final adaLN
layer and a linear unpatchify. There is no class embedding: the segmentation condition enters as
extra input channels (see ``networks.segdt.model``).

Differences from the reference: the position embedding is computed from the token grid in
``forward`` (so one network serves every input size divisible by the patch), and attention runs
through the dermseg ``global_attention`` dispatcher.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from einops import rearrange
from timm.layers import Mlp
from torch import nn

from networks.common import check_input_shape
from networks.kernels.global_attention import global_attention

#: Transformer sizes: ``dit_xs`` is SegDT's (Bekhouche et al. 2025), ``dit_s`` is DiT-S.
DIT_SIZES: dict[str, dict[str, int]] = {
    "dit_xs": {"depth": 8, "embed_dim": 256, "num_heads": 4},
    "dit_s": {"depth": 12, "embed_dim": 384, "num_heads": 6},
    "tiny": {"depth": 2, "embed_dim": 64, "num_heads": 2},
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens ``x [B, N, D]`` by per-sample ``shift, scale [B, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_position_embedding(
    grid_h: int, grid_w: int, dim: int, *, device=None, dtype=None
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE/DiT): half the channels rows, half columns.

    Returns:
        ``[grid_h * grid_w, dim]`` in row-major token order.
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position embedding needs dim divisible by 4, got {dim}.")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)
    rows = torch.arange(grid_h, device=device, dtype=torch.float64)[:, None] * omega  # (gh, D/4)
    cols = torch.arange(grid_w, device=device, dtype=torch.float64)[:, None] * omega  # (gw, D/4)
    rows = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None].expand(grid_h, grid_w, dim // 2)
    cols = torch.cat([cols.sin(), cols.cos()], dim=1)[None].expand(grid_h, grid_w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, dim).to(dtype or torch.float32)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of a continuous time ``t`` followed by an MLP.

    Args:
        embed_dim: output width.
        frequency_dim: width of the sinusoidal features.
        time_scale: ``t`` is multiplied by this before the sinusoid. Rectified-flow times live in
            [0, 1]; the DiT frequencies were designed for integer steps in [0, 1000), so 1000 keeps
            them informative (the convention of Stable Diffusion 3).
        max_period: longest sinusoid period.
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        frequency_dim: int = 256,
        time_scale: float = 1000.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B]`` -> ``[B, frequency_dim]`` (cosines then sines)."""
        half = self.frequency_dim // 2
        exponent = -math.log(self.max_period) * torch.arange(half, device=t.device) / half
        args = (t.float() * self.time_scale)[:, None] * exponent.exp()[None]  # (B, half)
        return torch.cat([args.cos(), args.sin()], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Args: t ``[B]`` times. Returns ``[B, embed_dim]``."""
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


class MultiHeadSelfAttention(nn.Module):
    """Global multi-head self-attention over tokens via the ``global_attention`` dispatcher.

    Args:
        dim: token width.
        num_heads: attention heads (must divide ``dim``).
        qkv_bias: bias on the fused query/key/value projection.
        attention_backend: backend name for ``networks.kernels.global_attention``.
    """

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool = True, attention_backend: str = "auto"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"embed_dim {dim} is not divisible by num_heads {num_heads}; choose a head count "
                "that divides the width."
            )
        self.num_heads = num_heads
        self.attention_backend = attention_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, N, D]``. Returns ``[B, N, D]``."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        # (B, h, N, d)
        out = global_attention(qkv[0], qkv[1], qkv[2], backend=self.attention_backend)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (six modulation vectors from the condition).

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        attention_backend: backend for the global-attention dispatcher.
    """

    def __init__(
        self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, attention_backend: str = "auto"
    ) -> None:
        super().__init__()
        # Affine-free norms: the shift/scale come from the condition instead.
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadSelfAttention(dim, num_heads, attention_backend=attention_backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, N, D]`` tokens, c ``[B, D]`` condition. Returns ``[B, N, D]``."""
        modulation = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN-modulated norm and a linear map from each token to its ``patch x patch x C`` pixels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, N, D]``, c ``[B, D]``. Returns ``[B, N, p*p*C]``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion transformer on a ``[B, C, h, w]`` latent, conditioned on a time ``t``.

    Args:
        in_channels: input latent channels (noisy target plus any concatenated condition).
        out_channels: predicted channels (e.g. the velocity of the target latent).
        patch_size: side of the square patches (``h`` and ``w`` must be divisible by it).
        embed_dim: token width.
        depth: number of ``DiTBlock``\\ s.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        attention_backend: backend for the global-attention dispatcher.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        patch_size: int = 2,
        embed_dim: int = 256,
        depth: int = 8,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if embed_dim % 4:
            raise ValueError(
                f"DiT embed_dim must be divisible by 4 (2-D sin-cos embedding), got {embed_dim}."
            )
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(embed_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, attention_backend=attention_backend)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(embed_dim, patch_size, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT init: Xavier linears, N(0, 0.02) time MLP, zero adaLN regressors and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch embedding is a linear map of flattened patches.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_channels, h, w]``, t ``[B]``. Returns ``[B, out_channels, h, w]``."""
        check_input_shape(x, self.patch_size, type(self).__name__)
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + sincos_position_embedding(
            grid_h, grid_w, tokens.shape[-1], device=x.device, dtype=tokens.dtype
        )
        c = self.t_embedder(t)  # (B, D)
        for block in self.blocks:
            tokens = block(tokens, c)
        tokens = self.final_layer(tokens, c)  # (B, N, p*p*C)
        return rearrange(
            tokens,
            "b (gh gw) (p q c) -> b c (gh p) (gw q)",
            gh=grid_h,
            p=self.patch_size,
            q=self.patch_size,
        )
