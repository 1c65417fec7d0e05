"""TransDAE (Azad, Adibfar, Fu, "TransDAE: Dual Attention Mechanism in a Hierarchical Transformer
for Efficient Medical Image Segmentation", arXiv:2409.02018, 2024).

No code was released. This implementation follows the paper's description on top of DAE-Former
(Azad et al., 2023, repository ``xmindflow/DAEFormer``, whose sizes it starts from: widths
128/320/512, two blocks per stage, three stages). Assumptions, where the paper leaves a detail open:

1. Encoder block = :class:`~networks.blocks.efficient.DualTransformerBlock`: pre-norm residual
   branches in the order spatial efficient attention, Mix-FFN (with skip), channel (transposed)
   attention, Mix-FFN. The spatial attention reduces keys/values with a ``r x r`` stride-``r``
   convolution + LayerNorm (PVT/SegFormer); ``sr_ratios`` default to SegFormer's (8, 4, 2) for the
   1/4, 1/8 and 1/16 stages. Spatial attention has one head (DAE-Former), channel attention 8
   (DAE-Former's default).
2. Patch embedding and merging are overlapping convolutions (7x7/4, then 3x3/2) with LayerNorm.
3. Inter-scale interaction module (ISIM), at every skip: the decoder tokens (up-sampled from the
   coarser scale and linearly mapped to the skip width) are concatenated with the encoder skip,
   linearly fused to the skip width and normalised (``f``); a decomposed large kernel in the style
   of LKA (Guo et al., "Visual Attention Network", 2022) - depthwise 5x5, depthwise 7x7 with
   dilation 3, pointwise 1x1 - turns ``f`` into an attention map ``a``; the module returns
   ``f + f * a``.
   ``isim=False`` keeps the concatenation and linear fusion only (the ablation).
4. Decoder as DAE-Former's: the deepest map is expanded x2 (``C -> C/2``); at each shallower scale:
   ISIM, ``decoder_depth`` dual-attention blocks, then x2 expansion (``C -> C/2``), the last one x4
   keeping ``C``, and a 1x1 classifier.

Parameter count for ``in_channels=3, num_classes=1`` with the defaults: **40,529,169** (no unused
parameters; ``isim=False``: 40,375,889), not checked against a count from the paper.
Inputs of any size: sides that are not multiples of 16 are zero-padded and the logits cropped back
(``pad_input=False`` raises instead). Spatial reduction needs each stage grid to be at least
``sr_ratio`` wide: inputs of at least 32 px with the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from networks.blocks.efficient import (
    HW,
    DualTransformerBlock,
    HierarchicalEncoder,
    expand_tokens,
    init_weights,
    to_map,
    to_tokens,
)
from networks.blocks.swin import FinalPatchExpand, PatchExpand
from networks.common import pad_or_check
from networks.registry import NETWORKS


class InterScaleInteraction(nn.Module):
    """TransDAE skip fusion of an encoder skip and the decoder tokens of the same resolution.

    Args:
        dim: channels of the skip and of the (already mapped) decoder tokens.
        large_kernel: add the decomposed large-kernel attention (``False`` = concat + linear only).
        norm_layer: norm class.
    """

    def __init__(
        self, dim: int, *, large_kernel: bool = True, norm_layer: type[nn.Module] = nn.LayerNorm
    ) -> None:
        super().__init__()
        self.fuse = nn.Linear(2 * dim, dim)
        self.norm = norm_layer(dim)
        self.attention = (
            nn.Sequential(
                nn.Conv2d(dim, dim, 5, padding=2, groups=dim),
                nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim),
                nn.Conv2d(dim, dim, 1),
            )
            if large_kernel
            else None
        )

    def forward(self, skip: torch.Tensor, dec: torch.Tensor, hw: HW) -> torch.Tensor:
        """Args: skip, dec ``[B, N, dim]``, hw ``(H, W)``. Returns ``[B, N, dim]``."""
        f = self.norm(self.fuse(torch.cat([skip, dec], dim=-1)))
        if self.attention is None:
            return f
        a = to_tokens(self.attention(to_map(f, hw)))[0]
        return f + f * a


class TransDAE(nn.Module):
    """TransDAE segmenter (see the module docstring for the assumptions made).

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary lesion segmentation).
        embed_dims: stage widths.
        depths: encoder blocks per stage.
        decoder_depth: dual-attention blocks per decoder scale (DAE-Former: 2).
        num_heads: spatial efficient-attention heads, one int or one per stage.
        channel_heads: channel-attention heads.
        sr_ratios: spatial reduction of keys/values per stage.
        mlp_ratio: Mix-FFN hidden width over the stage width.
        isim: use the large-kernel inter-scale interaction in the skips (``False`` = ablation).
        drop_path_rate: stochastic depth, linearly increasing over the encoder blocks.
        pad_input: zero-pad sides that are not multiples of 16 (and crop the logits); if ``False``
            such inputs raise ``ValueError``.
        norm_layer: norm class.
        attention_backend: backend of the attention dispatchers.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        embed_dims: Sequence[int] = (128, 320, 512),
        depths: Sequence[int] = (2, 2, 2),
        decoder_depth: int = 2,
        num_heads: int | Sequence[int] = 1,
        channel_heads: int = 8,
        sr_ratios: Sequence[int] = (8, 4, 2),
        mlp_ratio: float = 4.0,
        isim: bool = True,
        drop_path_rate: float = 0.0,
        pad_input: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        dims = list(embed_dims)
        heads = [num_heads] * len(dims) if isinstance(num_heads, int) else list(num_heads)
        if not len(dims) == len(depths) == len(heads) == len(sr_ratios) or len(dims) < 2:
            raise ValueError(
                f"embed_dims {dims}, depths {list(depths)}, num_heads {heads} and sr_ratios "
                f"{list(sr_ratios)} must have the same length (at least 2 stages)."
            )

        def block(d: int, h: int, sr: int, dp: float) -> DualTransformerBlock:
            return DualTransformerBlock(
                d,
                num_heads=h,
                channel_heads=channel_heads,
                mlp_ratio=mlp_ratio,
                sr_ratio=sr,
                drop_path=dp,
                norm_layer=norm_layer,
                attention_backend=attention_backend,
            )

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, start = [], 0
        for d, n, h, sr in zip(dims, depths, heads, sr_ratios, strict=True):
            stages.append([block(d, h, sr, rates[start + j]) for j in range(n)])
            start += n
        self.encoder = HierarchicalEncoder(in_channels, dims, stages, norm_layer=norm_layer)
        self.pad_input = pad_input
        # Decoder, deepest first: expand the bottleneck; per shallower scale fuse, refine, expand.
        self.bottleneck_expand = PatchExpand(dim=dims[-1], norm_layer=norm_layer)
        self.up_proj, self.interaction, self.blocks, self.expand = (
            nn.ModuleList() for _ in range(4)
        )
        incoming = dims[-1] // 2
        for i in reversed(range(len(dims) - 1)):
            d, last = dims[i], i == 0
            self.up_proj.append(nn.Linear(incoming, d))
            self.interaction.append(
                InterScaleInteraction(d, large_kernel=isim, norm_layer=norm_layer)
            )
            self.blocks.append(
                nn.ModuleList(block(d, heads[i], sr_ratios[i], 0.0) for _ in range(decoder_depth))
            )
            self.expand.append(
                FinalPatchExpand(dim=d, scale=4, norm_layer=norm_layer)
                if last
                else PatchExpand(dim=d, norm_layer=norm_layer)
            )
            incoming = d // 2
        self.head = nn.Conv2d(dims[0], num_classes, 1)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_channels, H, W]``. Returns logits ``[B, num_classes, H, W]``."""
        h, w = x.shape[-2:]
        x = pad_or_check(x, self.encoder.reduction, self.pad_input, type(self).__name__)
        feats, sizes = self.encoder(x)
        y, hw = expand_tokens(self.bottleneck_expand, feats[-1], sizes[-1])
        for j, i in enumerate(reversed(range(len(feats) - 1))):
            y = self.interaction[j](feats[i], self.up_proj[j](y), hw)
            for blk in self.blocks[j]:
                y = blk(y, hw)
            y, hw = expand_tokens(self.expand[j], y, hw)
        return self.head(to_map(y, hw))[..., :h, :w]


NETWORKS.register("transdae", TransDAE)
NETWORKS.register(
    "transdae_tiny",
    TransDAE,
    embed_dims=(16, 32, 64),
    depths=(1, 1, 1),
    decoder_depth=1,
    num_heads=2,
    channel_heads=2,
    mlp_ratio=2.0,
)
