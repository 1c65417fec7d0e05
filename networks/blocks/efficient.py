"""Blocks of the efficient-attention U-shaped transformers (DAE-Former family: ISCF, TransDAE).

Layout convention: token sequences ``x [B, N, C]`` travel with their grid size ``hw = (H, W)``
(``N = H * W``, row-major), as in SegFormer (Xie et al., NeurIPS 2021) and DAE-Former (Azad et al.,
PRIME workshop at MICCAI 2023, repository ``xmindflow/DAEFormer``). Sizes always come from the
input, never from construction.

Contents: :class:`OverlapPatchEmbed`, :class:`EfficientAttention` (Shen et al., WACV 2021, with real
multi-head support and optional spatial reduction), :class:`ChannelAttention` (transposed /
cross-covariance attention, El-Nouby et al., XCiT, NeurIPS 2021), :class:`MixFFN` (SegFormer's
Mix-FFN and DAE-Former's variant with a skip), the pyramid encoder and two encoder blocks built
from them, and :func:`expand_tokens`, which runs Swin-Unet's patch expanding (Cao et al., ECCV-W
2022, :mod:`networks.blocks.swin`) on token sequences.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import nn

from networks.kernels.efficient_attention import efficient_attention
from networks.kernels.global_attention import global_attention

HW = tuple[int, int]


def to_map(x: torch.Tensor, hw: HW) -> torch.Tensor:
    """Tokens ``[B, N, C]`` -> map ``[B, C, H, W]``."""
    return rearrange(x, "b (h w) c -> b c h w", h=hw[0], w=hw[1])


def to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, HW]:
    """Map ``[B, C, H, W]`` -> tokens ``[B, N, C]`` and ``(H, W)``."""
    return rearrange(x, "b c h w -> b (h w) c"), (x.shape[-2], x.shape[-1])


def init_weights(module: nn.Module) -> None:
    """SegFormer/timm initialisation: truncated-normal linears, fan-out convs, unit norms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (fan_out // module.groups)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided convolution (kernel > stride) followed by a norm.

    With ``padding = kernel_size // 2`` a side of length ``L`` becomes ``ceil(L / stride)``.

    Args:
        in_channels: input channels.
        embed_dim: output channels.
        patch_size: convolution kernel (7 for the stem, 3 for merging in SegFormer).
        stride: down-sampling factor.
        norm_layer: norm over the channel (last) dimension.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        *,
        patch_size: int = 7,
        stride: int = 4,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if patch_size < stride:
            raise ValueError(
                f"overlapping patch embedding needs patch_size >= stride, got {patch_size} < "
                f"{stride}; use e.g. patch_size={2 * stride - 1}."
            )
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, patch_size // 2)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, HW]:
        """Args: x ``[B, C_in, H, W]``. Returns tokens ``[B, H'*W', D]`` and ``(H', W')``."""
        x, hw = to_tokens(self.proj(x))
        return self.norm(x), hw


class EfficientAttention(nn.Module):
    """Multi-head efficient attention (Shen et al., "Efficient Attention: Attention with Linear
    Complexities", WACV 2021) on token sequences.

    Per head ``h``: ``context_h = softmax_N(K_h) V_h^T`` (``[dk, dv]``), ``out_h = context_h^T
    softmax_dk(Q_h)``; heads are concatenated and re-projected. Unlike the released DAE-Former and
    ISCF code (which construct it with ``head_count=1`` whatever the configuration says),
    ``num_heads`` is honoured; the parameter count does not depend on it.

    Args:
        dim: token channels.
        num_heads: heads; must divide ``key_dim`` and ``value_dim``.
        key_dim: channels of queries and keys (default ``dim``).
        value_dim: channels of values (default ``dim``).
        sr_ratio: spatial reduction of keys/values (PVT/SegFormer style: a ``sr x sr`` convolution
            with stride ``sr`` and a norm); 1 disables it. Queries keep full resolution.
        project_out: add the output re-projection ``value_dim -> dim`` (callers that re-project
            themselves, such as the ISCF bridge, switch it off so no parameter goes unused).
        norm_layer: norm after the spatial reduction.
        attention_backend: backend of :func:`networks.kernels.efficient_attention`.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 1,
        key_dim: int | None = None,
        value_dim: int | None = None,
        sr_ratio: int = 1,
        project_out: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.key_dim, self.value_dim = key_dim or dim, value_dim or dim
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide key_dim={self.key_dim} and "
                f"value_dim={self.value_dim}; pick a divisor of both."
            )
        self.num_heads, self.sr_ratio, self.backend = num_heads, sr_ratio, attention_backend
        self.q = nn.Linear(dim, self.key_dim)
        self.kv = nn.Linear(dim, self.key_dim + self.value_dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = norm_layer(dim)
        self.proj = nn.Linear(self.value_dim, dim) if project_out else nn.Identity()

    def project(self, x: torch.Tensor, hw: HW) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values in the kernel layout ``[B, heads, d, N]`` (keys/values reduced)."""
        q = rearrange(self.q(x), "b n (h d) -> b h d n", h=self.num_heads)
        if self.sr_ratio > 1:
            if min(hw) < self.sr_ratio:
                raise ValueError(
                    f"spatial reduction {self.sr_ratio} needs a grid of at least "
                    f"{self.sr_ratio}x{self.sr_ratio}, got {hw[0]}x{hw[1]}; use a larger input."
                )
            x, _ = to_tokens(self.sr(to_map(x, hw)))
            x = self.sr_norm(x)
        k, v = self.kv(x).split([self.key_dim, self.value_dim], dim=-1)
        k = rearrange(k, "b n (h d) -> b h d n", h=self.num_heads)
        v = rearrange(v, "b n (h d) -> b h d n", h=self.num_heads)
        return q, k, v

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Args: x ``[B, N, dim]``, hw ``(H, W)``. Returns ``[B, N, dim]``."""
        out = efficient_attention(*self.project(x, hw), backend=self.backend)  # (B, h, dv, N)
        return self.proj(rearrange(out, "b h d n -> b n (h d)"))


class ChannelAttention(nn.Module):
    """Transposed ("channel") attention: the attention map is ``[d, d]`` per head, between channels.

    Queries and keys are L2-normalised over the tokens and scaled by a learned per-head temperature
    (XCiT's cross-covariance attention, El-Nouby et al., NeurIPS 2021, as used by DAE-Former).
    Computed through :func:`networks.kernels.global_attention` with channels as its "tokens".

    Args:
        dim: token channels; ``num_heads`` must divide it.
        num_heads: heads.
        qkv_bias: bias of the query/key/value projection.
        attention_backend: backend of the global-attention dispatcher.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"channel attention: num_heads={num_heads} must divide dim={dim}; "
                "pick a divisor of the stage width."
            )
        self.num_heads, self.backend = num_heads, attention_backend
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, N, dim]``. Returns ``[B, N, dim]``."""
        q, k, v = rearrange(self.qkv(x), "b n (t h d) -> t b h d n", t=3, h=self.num_heads)
        q = nn.functional.normalize(q, dim=-1) * self.temperature  # (B, h, d, N)
        k = nn.functional.normalize(k, dim=-1)
        out = global_attention(q, k, v, scale=1.0, backend=self.backend)  # (B, h, d, N)
        return self.proj(rearrange(out, "b h d n -> b n (h d)"))


class MixFFN(nn.Module):
    """Mix-FFN: ``fc1 -> 3x3 depthwise conv -> GELU -> fc2`` (SegFormer).

    With ``skip=True`` it is DAE-Former's ``MixFFN_skip``: ``fc2(GELU(LN(dw(h) + h)))`` with
    ``h = fc1(x)``, the depthwise convolution acting as a residual positional refinement.

    Args:
        dim: token channels.
        hidden_dim: hidden channels (default ``4 * dim``).
        skip: add the skip and the norm around the depthwise convolution.
        act_layer: activation class.
        norm_layer: norm class (only with ``skip``).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        *,
        skip: bool = True,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * dim
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.norm = norm_layer(hidden_dim) if skip else nn.Identity()
        self.skip = skip
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Args: x ``[B, N, dim]``, hw ``(H, W)``. Returns ``[B, N, dim]``."""
        h = self.fc1(x)
        mixed = to_tokens(self.dwconv(to_map(h, hw)))[0]
        if self.skip:
            mixed = self.norm(mixed + h)
        return self.fc2(self.act(mixed))


def expand_tokens(layer: nn.Module, x: torch.Tensor, hw: HW) -> tuple[torch.Tensor, HW]:
    """Run a channels-last up-sampling layer (``[B, H, W, C] -> [B, sH, sW, C']``) on tokens.

    The patch-expanding layers are Swin-Unet's, shared with the Swin networks:
    :class:`networks.blocks.swin.PatchExpand` (x2, ``C -> C/2``) and
    :class:`networks.blocks.swin.FinalPatchExpand` (x4, ``C`` kept).

    Args: x ``[B, H*W, C]``, hw ``(H, W)``. Returns ``[B, sH*sW, C']`` and ``(sH, sW)``.
    """
    y = layer(rearrange(x, "b (h w) c -> b h w c", h=hw[0], w=hw[1]))
    return rearrange(y, "b h w c -> b (h w) c"), (y.shape[1], y.shape[2])


class EfficientTransformerBlock(nn.Module):
    """ISCF / DAE-Former encoder block: ``x += EA(LN x); x += FFN(LN x); x += FFN(LN x)``.

    Args:
        dim: token channels.
        num_heads: efficient-attention heads.
        mlp_ratio: Mix-FFN hidden width over ``dim``.
        sr_ratio: spatial reduction of keys/values (1 = none, as in ISCF).
        drop_path: stochastic-depth probability of each residual branch.
        norm_layer: norm class.
        attention_backend: backend of the attention dispatcher.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = norm_layer(dim)
        self.attn = EfficientAttention(
            dim,
            num_heads=num_heads,
            sr_ratio=sr_ratio,
            norm_layer=norm_layer,
            attention_backend=attention_backend,
        )
        self.norm2 = norm_layer(dim)
        self.mlp1 = MixFFN(dim, hidden, norm_layer=norm_layer)
        self.norm3 = norm_layer(dim)
        self.mlp2 = MixFFN(dim, hidden, norm_layer=norm_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Args: x ``[B, N, dim]``, hw ``(H, W)``. Returns ``[B, N, dim]``."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        x = x + self.drop_path(self.mlp1(self.norm2(x), hw))
        return x + self.drop_path(self.mlp2(self.norm3(x), hw))


class DualTransformerBlock(nn.Module):
    """Dual-attention block (DAE-Former, TransDAE): spatial efficient attention, Mix-FFN, channel
    attention, Mix-FFN, each pre-norm and residual.

    Args:
        dim: token channels.
        num_heads: efficient (spatial) attention heads.
        channel_heads: channel-attention heads (DAE-Former uses 8).
        mlp_ratio: Mix-FFN hidden width over ``dim``.
        sr_ratio: spatial reduction of keys/values in the spatial attention.
        drop_path: stochastic-depth probability of each residual branch.
        norm_layer: norm class.
        attention_backend: backend of the attention dispatchers.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 1,
        channel_heads: int = 8,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = norm_layer(dim)
        self.spatial_attn = EfficientAttention(
            dim,
            num_heads=num_heads,
            sr_ratio=sr_ratio,
            norm_layer=norm_layer,
            attention_backend=attention_backend,
        )
        self.norm2 = norm_layer(dim)
        self.mlp1 = MixFFN(dim, hidden, norm_layer=norm_layer)
        self.norm3 = norm_layer(dim)
        self.channel_attn = ChannelAttention(
            dim, num_heads=channel_heads, attention_backend=attention_backend
        )
        self.norm4 = norm_layer(dim)
        self.mlp2 = MixFFN(dim, hidden, norm_layer=norm_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Args: x ``[B, N, dim]``, hw ``(H, W)``. Returns ``[B, N, dim]``."""
        x = x + self.drop_path(self.spatial_attn(self.norm1(x), hw))
        x = x + self.drop_path(self.mlp1(self.norm2(x), hw))
        x = x + self.drop_path(self.channel_attn(self.norm3(x)))
        return x + self.drop_path(self.mlp2(self.norm4(x), hw))


class HierarchicalEncoder(nn.Module):
    """SegFormer-style pyramid: per stage an overlapping patch embedding (7x7/4 for the first, 3x3/2
    after), the given blocks, and a norm.

    Args:
        in_channels: image channels.
        embed_dims: channels per stage.
        stages: the blocks of each stage (``forward(x, hw)`` on tokens), built by the network.
        norm_layer: norm of the patch embeddings and after each stage.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dims: list[int] | tuple[int, ...],
        stages: list[list[nn.Module]],
        *,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if len(stages) != len(embed_dims):
            raise ValueError(
                f"got {len(stages)} stages of blocks for {len(embed_dims)} embed_dims; "
                "give one list of blocks per stage width."
            )
        widths = [in_channels, *embed_dims]
        self.patch_embeds = nn.ModuleList(
            OverlapPatchEmbed(
                widths[i],
                widths[i + 1],
                patch_size=7 if i == 0 else 3,
                stride=4 if i == 0 else 2,
                norm_layer=norm_layer,
            )
            for i in range(len(embed_dims))
        )
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.norms = nn.ModuleList(norm_layer(d) for d in embed_dims)

    @property
    def reduction(self) -> int:
        """Down-sampling of the last stage (4 * 2 ** (stages - 1))."""
        return 4 * 2 ** (len(self.stages) - 1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[HW]]:
        """Args: x ``[B, C, H, W]``. Returns per-stage tokens ``[B, N_i, D_i]`` and grid sizes."""
        feats, sizes = [], []
        for embed, blocks, norm in zip(self.patch_embeds, self.stages, self.norms, strict=True):
            x, hw = embed(x if not feats else to_map(x, sizes[-1]))
            for block in blocks:
                x = block(x, hw)
            x = norm(x)
            feats.append(x)
            sizes.append(hw)
        return feats, sizes
