"""Swin Transformer building blocks (Liu et al., "Swin Transformer: Hierarchical Vision Transformer
using Shifted Windows", ICCV 2021) and the Swin-Unet up-sampling layers (Cao et al., "Swin-Unet:
Unet-like Pure Transformer for Medical Image Segmentation", ECCV Workshops 2022).

This file is the only home of the Swin machinery in dermseg. Feature maps are channels-last
``[B, H, W, C]`` throughout, so every block reads its resolution from the input and one network
serves 224, 256 or any other size. Parameter names follow the official microsoft/Swin-Transformer
layout (``patch_embed.proj``, ``blocks.{j}.attn.relative_position_bias_table``,
``downsample.reduction``, ...) so that ImageNet checkpoints load without renaming.

Differences from the official implementation, all at sizes the official code cannot run:

* Maps whose sides are not multiples of the window are zero-padded on the bottom/right (as in the
  Swin detection code) and the padded tokens are masked out as keys, so real tokens never attend to
  padding.
* The cyclic shift is disabled when ``min(H, W) <= window_size`` (the Swin rule); the window keeps
  its constructor size (a smaller map is padded into it) so the relative-position table never
  changes shape.
* Attention dropout is not offered (Swin-Unet uses 0): the fused attention backends do not
  implement it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from networks.kernels.window_attention import window_attention

# additive mask value of the official Swin code: exp(-100) underflows to 0 in fp32
MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split ``[B, H, W, C]`` (H, W multiples of ``window_size``) into windows ``[B*nW, ws*ws, C]``.

    Windows of one image are contiguous and row-major (index ``b * nW + row * (W // ws) + col``).
    """
    return rearrange(
        x, "b (nh p1) (nw p2) c -> (b nh nw) (p1 p2) c", p1=window_size, p2=window_size
    )


def window_reverse(
    windows: torch.Tensor, window_size: int, height: int, width: int
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B*nW, ws*ws, C]`` -> ``[B, H, W, C]``."""
    return rearrange(
        windows,
        "(b nh nw) (p1 p2) c -> b (nh p1) (nw p2) c",
        nh=height // window_size,
        nw=width // window_size,
        p1=window_size,
    )


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index ``long [N, N]`` (N = ws*ws) into the relative-position bias table ``[(2ws-1)**2, h]``.

    Entry ``(i, j)`` encodes the displacement between tokens i and j, ``(dy + ws - 1) * (2ws - 1) +
    dx + ws - 1``, the layout of the official checkpoints.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # (2, N)
    delta = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)  # (2, N, N), >= 0
    return delta[0] * (2 * window_size - 1) + delta[1]


@functools.lru_cache(maxsize=64)
def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor | None:
    """Additive attention mask ``[nW, N, N]`` for a ``height x width`` map (None: nothing masked).

    The map is padded to multiples of ``window_size`` on the bottom/right and cyclically shifted by
    ``-shift_size``. Two tokens of one window may attend to each other only if they were neighbours
    before the shift (no wrap-around) and both are real or both padding. Cached per ``(H, W, window,
    shift, device)``; the cached tensor is shared, never modify it in place.
    """
    pad_h, pad_w = -height % window_size, -width % window_size
    if shift_size == 0 and pad_h == 0 and pad_w == 0:
        return None
    hp, wp = height + pad_h, width + pad_w
    # Built outside inference mode so that a mask first cached under torch.inference_mode() is
    # usable in training later.
    with torch.inference_mode(False):
        rows, cols = torch.arange(hp), torch.arange(wp)

        def region(index: torch.Tensor, size: int) -> torch.Tensor:
            # 0: untouched windows, 1: last window before the wrap, 2: wrapped around by the roll
            if shift_size == 0:
                return torch.zeros_like(index)
            return (index >= size - window_size).long() + (index >= size - shift_size).long()

        label = region(rows, hp)[:, None] * 3 + region(cols, wp)[None, :]  # (Hp, Wp)
        # position (i, j) of the shifted map holds the original token (i + s, j + s) mod (Hp, Wp)
        padded = ((rows + shift_size) % hp >= height)[:, None] | ((cols + shift_size) % wp >= width)
        label = label * 2 + padded.long()
        windows = window_partition(label[None, :, :, None], window_size)[..., 0]  # (nW, N)
        blocked = windows[:, :, None] != windows[:, None, :]  # (nW, N, N)
        mask = torch.zeros(blocked.shape).masked_fill_(blocked, MASK_VALUE)
    return mask.to(device)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: strided convolution + LayerNorm.

    Args:
        in_channels: image channels.
        embed_dim: token channels.
        patch_size: patch side (input sides must be multiples of it).
        norm_layer: normalisation on the tokens, or None.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        embed_dim: int,
        patch_size: int = 4,
        norm_layer: type[nn.Module] | None = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``. Returns tokens ``[B, H/p, W/p, embed_dim]``."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"PatchEmbed needs sides divisible by patch_size={self.patch_size}, got {h}x{w}; "
                "pad the input first (SwinUNet does this in forward)."
            )
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    The attention itself runs through :func:`networks.kernels.window_attention.window_attention`, so
    a fused backend is used whenever the attention map is not needed.

    Args:
        dim: token channels.
        num_heads: attention heads (``dim`` must be divisible by it).
        window_size: window side ``ws`` (windows hold ``N = ws * ws`` tokens).
        qkv_bias: learn a bias for the query/key/value projection.
        proj_drop: dropout after the output projection.
        attention_backend: dispatcher backend (``"auto"``, ``"reference"``, ...).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"WindowAttention needs dim divisible by num_heads, got dim={dim}, "
                f"num_heads={num_heads}."
            )
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.attention_backend = attention_backend
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        # derived from window_size, so not saved (the official checkpoints' copy is dropped)
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # how ``encoder_attn @ V`` joins this block's output: None adds it; Att-SwinU-Net sets a
        # module ``(own, encoder) -> fused`` on its decoder blocks (``spatial_fusion``)
        self.spatial_fusion: nn.Module | None = None

    def relative_position_bias(self) -> torch.Tensor:
        """Gathered bias ``[heads, N, N]``."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        encoder_attn: torch.Tensor | None = None,
        return_attn: bool = False,
    ):
        """Attend within windows.

        Args:
            x: windows ``[B*nW, N, C]``.
            mask: additive mask ``[nW, N, N]`` (see :func:`shifted_window_mask`) or None.
            encoder_attn: softmax attention ``[B*nW, heads, N, N]`` of another block
                (Att-SwinU-Net's spatial branch); when given the output is
                ``attn(Q, K, V) + encoder_attn @ V``, or ``spatial_fusion(attn(Q, K, V),
                encoder_attn @ V)`` when that attribute is set.
            return_attn: also return this block's softmax attention map.

        Returns:
            ``[B*nW, N, C]``, or ``(out, attn [B*nW, heads, N, N])`` with ``return_attn``.
        """
        q, k, v = rearrange(
            self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads
        )
        result = window_attention(
            q,
            k,
            v,
            bias=self.relative_position_bias().to(q.dtype),
            mask=None if mask is None else mask.to(q.dtype),
            scale=self.scale,
            return_attn=return_attn,
            backend=self.attention_backend,
        )
        out, attn = result if return_attn else (result, None)  # out: (B*nW, h, N, d)
        if encoder_attn is not None:
            if encoder_attn.shape != (*q.shape[:2], q.shape[2], q.shape[2]):
                raise ValueError(
                    f"encoder attention map {tuple(encoder_attn.shape)} does not match this "
                    f"block's windows {(*q.shape[:2], q.shape[2], q.shape[2])}; pair blocks of "
                    "the same stage, window size and input size."
                )
            encoder_out = encoder_attn.to(v.dtype) @ v
            fusion = self.spatial_fusion
            out = out + encoder_out if fusion is None else fusion(out, encoder_out)
        out = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return (out, attn) if return_attn else out


class SwinBlock(nn.Module):
    """Swin Transformer block: (shifted) window attention and MLP, each pre-norm with a residual.

    Args:
        dim: token channels.
        num_heads: attention heads.
        window_size: window side.
        shift_size: cyclic shift (``window_size // 2`` for every second block, 0 otherwise).
        mlp_ratio: MLP hidden width relative to ``dim``.
        qkv_bias: learn a query/key/value bias.
        drop: dropout after the attention projection and inside the MLP.
        drop_path: stochastic depth rate of both residual branches.
        act_layer: MLP activation.
        norm_layer: normalisation class.
        attention_backend: window-attention dispatcher backend.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(
                f"SwinBlock needs 0 <= shift_size < window_size, got shift_size={shift_size}, "
                f"window_size={window_size}; use window_size // 2 for shifted blocks."
            )
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(
            dim=dim,
            num_heads=num_heads,
            window_size=window_size,
            qkv_bias=qkv_bias,
            proj_drop=drop,
            attention_backend=attention_backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(
        self,
        x: torch.Tensor,
        *,
        encoder_attn: torch.Tensor | None = None,
        return_attn: bool = False,
    ):
        """Args: x ``[B, H, W, C]`` (any H, W); ``encoder_attn``/``return_attn`` as in
        :class:`WindowAttention`. Returns ``[B, H, W, C]`` or ``(x, attn [B*nW, heads, N, N])``."""
        _, height, width, _ = x.shape
        ws = self.window_size
        shift = self.shift_size if min(height, width) > ws else 0  # one window: nothing to shift
        shortcut = x
        x = self.norm1(x)
        x = F.pad(x, (0, 0, 0, -width % ws, 0, -height % ws))  # (B, Hp, Wp, C), zeros are masked
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        hp, wp = x.shape[1:3]
        mask = shifted_window_mask(height, width, ws, shift, x.device)
        result = self.attn(
            window_partition(x, ws), mask, encoder_attn=encoder_attn, return_attn=return_attn
        )  # (B*nW, N, C)
        windows, attn = result if return_attn else (result, None)
        x = window_reverse(windows, ws, hp, wp)  # (B, Hp, Wp, C)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(x[:, :height, :width])
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attn else x


class PatchMerging(nn.Module):
    """2x down-sampling: concatenate each 2x2 neighbourhood (4C), normalise, project to 2C.

    The concatenation order (top-left, bottom-left, top-right, bottom-right) is the official one, so
    ImageNet ``reduction`` weights apply unchanged.
    """

    def __init__(self, *, dim: int, norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, H, W, C]`` with even H, W. Returns ``[B, H/2, W/2, 2C]``."""
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            raise ValueError(
                f"PatchMerging needs an even feature map, got {h}x{w}; pad the network input to a "
                "multiple of patch_size * 2**(num_stages - 1)."
            )
        x = rearrange(x, "b (h p1) (w p2) c -> b h w (p2 p1 c)", p1=2, p2=2)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """2x up-sampling of Swin-Unet: Linear C -> 2C, rearrange into a 2x2 neighbourhood of C/2,
    normalise."""

    def __init__(self, *, dim: int, norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = norm_layer(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, H, W, C]``. Returns ``[B, 2H, 2W, C/2]``."""
        x = rearrange(self.expand(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=2, p2=2)
        return self.norm(x)


class FinalPatchExpand(nn.Module):
    """Final ``scale``x up-sampling of Swin-Unet back to pixel resolution, keeping C channels.

    Args:
        dim: token channels (kept).
        scale: up-sampling factor (the patch size, 4 in Swin-Unet).
        norm_layer: normalisation class.
    """

    def __init__(
        self, *, dim: int, scale: int = 4, norm_layer: type[nn.Module] = nn.LayerNorm
    ) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale**2 * dim, bias=False)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, H, W, C]``. Returns ``[B, scale*H, scale*W, C]``."""
        s = self.scale
        return self.norm(
            rearrange(self.expand(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=s, p2=s)
        )


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating regular and shifted windows, then optional resampling.

    Args:
        dim: token channels.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: window side.
        mlp_ratio, qkv_bias, drop, norm_layer, attention_backend: as in :class:`SwinBlock`.
        drop_path: one stochastic-depth rate per block (or one for all).
        downsample: resampling class applied after the blocks (``PatchMerging``,
            ``PatchExpand``) or None.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float | list[float] = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        downsample: type[nn.Module] | None = None,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        rates = drop_path if isinstance(drop_path, list | tuple) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop,
                drop_path=rates[i],
                norm_layer=norm_layer,
                attention_backend=attention_backend,
            )
            for i in range(depth)
        )
        # official name "downsample"; the decoder's PatchExpand is "upsample" as in Swin-Unet
        resample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None
        self.resample_name = "upsample" if downsample is PatchExpand else "downsample"
        setattr(self, self.resample_name, resample)

    def forward(
        self,
        x: torch.Tensor,
        *,
        encoder_attns: list[torch.Tensor] | None = None,
        return_attn: bool = False,
    ):
        """Args: x ``[B, H, W, C]``; ``encoder_attns`` one map per block (spatial attention) or
        None; ``return_attn`` also returns the blocks' attention maps (before resampling).

        Returns: resampled ``x``, or ``(x, attns)`` with ``return_attn``."""
        attns = []
        for i, block in enumerate(self.blocks):
            enc = None if encoder_attns is None else encoder_attns[i]
            if return_attn:
                x, attn = block(x, encoder_attn=enc, return_attn=True)
                attns.append(attn)
            else:
                x = block(x, encoder_attn=enc)
        resample = getattr(self, self.resample_name)
        if resample is not None:
            x = resample(x)
        return (x, attns) if return_attn else x
