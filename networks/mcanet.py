"""MCANet: multi-scale cross-axis attention decoder on an MSCAN encoder.

Shao, Zeng, Hou, Yang: "MCANet: Medical Image Segmentation with Multi-Scale Cross-Axis
Attention", 2023 (arXiv:2312.08866). The decoder follows the authors' released mmsegmentation head
(haoshao-nku/medical_seg, ``MCAHead``), with one change: the common grid is 1/4 of the (padded)
input instead of a fixed 128x128, so one network serves every input size. Parameter counts for
1 class: T 4.05 M, S 14.00 M, B 26.83 M (as the released code).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from networks.blocks.mscan import MSCAN, MSCAN_VARIANTS
from networks.common import pad_or_check
from networks.kernels.axial_attention import axial_attention
from networks.registry import NETWORKS

NormFactory = Callable[[int], nn.Module]
# The released head normalises with GroupNorm(32 groups): decoder widths must be multiples of 32.
GroupNorm32: NormFactory = functools.partial(nn.GroupNorm, 32)
# The released MCA block's LayerNorm over channels uses eps 1e-5 (timm's LayerNorm2d default: 1e-6).
LayerNorm2dEps5: NormFactory = functools.partial(LayerNorm2d, eps=1e-5)


def _conv_norm_act(
    in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormFactory, groups: int = 1
) -> nn.Sequential:
    """``conv (no bias) -> norm -> ReLU``, mmcv's ``ConvModule`` as used by the released head."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False
    )
    # ConvModule's initialisation: He-normal over fan-out for the ReLU that follows.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, norm_layer(out_channels), nn.ReLU(inplace=True))


def _separable_conv(in_channels: int, out_channels: int, norm_layer: NormFactory) -> nn.Sequential:
    """Depthwise 3x3 and pointwise 1x1, each followed by norm and ReLU."""
    return nn.Sequential(
        _conv_norm_act(in_channels, in_channels, 3, norm_layer, groups=in_channels),
        _conv_norm_act(in_channels, out_channels, 1, norm_layer),
    )


class MultiScaleCrossAxisAttention(nn.Module):
    """The MCA block.

    Horizontal strips (``1x7 + 1x11 + 1x21``) and vertical strips (``7x1 + 11x1 + 21x1``) of the
    LayerNorm-ed input are both projected by one shared 1x1 convolution. Row attention takes its
    query from the vertical path and keys/values from the horizontal one; column attention the
    other way round. Each attention output adds its (L2-normalised, as in the released code) query
    back; both go through the shared projection again and are summed with the block input.

    Args:
        dim: channels (divisible by ``num_heads``).
        num_heads: attention heads (8 in the paper).
        strip_kernel_sizes: strip lengths.
        norm_layer: normalisation before the strips (LayerNorm over channels in the paper).
        attention_backend: passed to :func:`networks.kernels.axial_attention.axial_attention`.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        strip_kernel_sizes: Sequence[int] = (7, 11, 21),
        norm_layer: NormFactory = LayerNorm2dEps5,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"MCA block: dim={dim} must be divisible by num_heads={num_heads}; "
                "change the stage-2 width or num_heads."
            )
        self.num_heads = num_heads
        self.attention_backend = attention_backend
        self.norm = norm_layer(dim)
        self.horizontal = nn.ModuleList(
            nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim) for k in strip_kernel_sizes
        )
        self.vertical = nn.ModuleList(
            nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim) for k in strip_kernel_sizes
        )
        # One projection shared by all four uses, as in the released code.
        self.proj = nn.Conv2d(dim, dim, 1)

    def _normalize(self, x: torch.Tensor, axis: str) -> torch.Tensor:
        """L2-normalise each head's row (or column) token of ``x`` ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        x = x.view(b, self.num_heads, c // self.num_heads, h, w)  # (B, heads, c, H, W)
        # A row token of one head spans (c, W); a column token spans (c, H).
        dims = (2, 4) if axis == "row" else (2, 3)
        norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True).clamp_min(1e-12)
        return (x / norm).view(b, c, h, w)

    def _attend(self, query: torch.Tensor, key_value: torch.Tensor, axis: str) -> torch.Tensor:
        q = self._normalize(query, axis)
        out = axial_attention(
            q,
            key_value,
            key_value,
            num_heads=self.num_heads,
            axis=axis,
            backend=self.attention_backend,
        )
        return out + q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        y = self.norm(x)
        horizontal = self.proj(sum(conv(y) for conv in self.horizontal))
        vertical = self.proj(sum(conv(y) for conv in self.vertical))
        rows = self._attend(vertical, horizontal, "row")
        cols = self._attend(horizontal, vertical, "col")
        return self.proj(rows) + self.proj(cols) + x


class MCADecoder(nn.Module):
    """MCANet's decoder over the four encoder maps.

    Stage maps are resized to stage 1's grid (1/4 of the input); stages 2-4 are concatenated and
    squeezed to stage 2's width, refined by the MCA block, concatenated with stage 1, fused by two
    depthwise-separable 3x3 convolutions (to stage 4's width), aligned to stage 1's width by a 1x1
    convolution and classified.

    Args:
        in_dims: channels of the four encoder stages.
        num_classes: output channels.
        num_heads: heads of the cross-axis attention.
        dropout: dropout before the classifier.
        norm_layer: normalisation of the convolution blocks (GroupNorm with 32 groups in the paper).
        attention_backend: axial-attention backend.
    """

    def __init__(
        self,
        *,
        in_dims: Sequence[int],
        num_classes: int,
        num_heads: int = 8,
        dropout: float = 0.1,
        norm_layer: NormFactory = GroupNorm32,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        d1, d2, d3, d4 = in_dims
        self.squeeze = _conv_norm_act(d2 + d3 + d4, d2, 1, norm_layer)
        self.mca = MultiScaleCrossAxisAttention(
            d2, num_heads=num_heads, attention_backend=attention_backend
        )
        self.fuse = nn.Sequential(
            _separable_conv(d2 + d1, d4, norm_layer), _separable_conv(d4, d4, norm_layer)
        )
        self.align = _conv_norm_act(d4, d1, 1, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(d1, num_classes, 1)
        # mmseg's decode-head initialisation of the classifier: N(0, 0.01), zero bias.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: the 4 encoder maps, the first at 1/4 of the input.

        Returns:
            Logits ``[B, K, H/4, W/4]`` on the first map's grid.
        """
        grid = features[0].shape[-2:]
        resized = [
            f
            if f.shape[-2:] == grid
            else F.interpolate(f, grid, mode="bilinear", align_corners=False)
            for f in features
        ]
        x = self.mca(self.squeeze(torch.cat(resized[1:], dim=1)))
        x = self.align(self.fuse(torch.cat([x, resized[0]], dim=1)))
        return self.classifier(self.dropout(x))


class MCANet(nn.Module):
    """MCANet (Shao et al. 2023): MSCAN encoder + MCA decoder, logits upsampled to the input size.

    Input sizes: the encoder down-samples by 32. With ``pad_input=True`` (default, like the released
    test pipeline's ``size_divisor=32``) the input is zero-padded on the bottom/right to the next
    multiple of 32 and the logits are cropped back, so any size works; with ``pad_input=False``
    sides not divisible by 32 raise a ``ValueError`` naming the padded size.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary lesion segmentation).
        embed_dims, depths, mlp_ratios: MSCAN stage widths, depths, MLP ratios (``MSCAN_VARIANTS``).
        drop_path_rate: encoder stochastic depth (0.1 in the paper).
        num_heads: cross-axis attention heads (8).
        decoder_dropout: dropout before the classifier (0.1).
        encoder_norm_layer: encoder normalisation class (BatchNorm).
        decoder_norm_layer: decoder normalisation factory taking a channel count (GroupNorm(32)).
        pad_input: pad to a multiple of 32 instead of raising.
        attention_backend: axial-attention backend (``"auto"``, ``"reference"``, ...).
        pretrained: optional local path of an OpenMMLab MSCAN ImageNet checkpoint for the encoder.
    """

    divisor = 32

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        embed_dims: Sequence[int] = MSCAN_VARIANTS["t"]["embed_dims"],
        depths: Sequence[int] = MSCAN_VARIANTS["t"]["depths"],
        mlp_ratios: Sequence[float] = MSCAN_VARIANTS["t"]["mlp_ratios"],
        drop_path_rate: float = 0.1,
        num_heads: int = 8,
        decoder_dropout: float = 0.1,
        encoder_norm_layer: type[nn.Module] = nn.BatchNorm2d,
        decoder_norm_layer: NormFactory = GroupNorm32,
        pad_input: bool = True,
        attention_backend: str = "auto",
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.pad_input = pad_input
        self.encoder = MSCAN(
            in_channels=in_channels,
            embed_dims=embed_dims,
            depths=depths,
            mlp_ratios=mlp_ratios,
            drop_path_rate=drop_path_rate,
            norm_layer=encoder_norm_layer,
            pretrained=pretrained,
        )
        self.decoder = MCADecoder(
            in_dims=embed_dims,
            num_classes=num_classes,
            num_heads=num_heads,
            dropout=decoder_dropout,
            norm_layer=decoder_norm_layer,
            attention_backend=attention_backend,
        )

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimizer groups of the paper's recipe (the released config's ``paramwise_cfg``).

        The decoder trains at ``head_lr_mult * lr`` (10x); encoder normalisation parameters get no
        weight decay; everything else uses the optimizer defaults. The released config exempts
        parameters whose name contains ``norm``, which leaves the stem's two BatchNorms
        (``3 * embed_dims[0]`` parameters) decayed; here every encoder normalisation is exempt.

        Args:
            lr: base learning rate.
            head_lr_mult: learning-rate multiplier of the decoder.

        Returns:
            Parameter groups for ``torch.optim`` (only parameters with ``requires_grad``).
        """
        norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
        no_decay = {
            id(p)
            for m in self.encoder.modules()
            if isinstance(m, norm_types)
            for p in m.parameters(recurse=False)
        }
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in encoder if id(p) not in no_decay]},
            {"params": [p for p in encoder if id(p) in no_decay], "weight_decay": 0.0},
            {
                "params": [p for p in self.decoder.parameters() if p.requires_grad],
                "lr": lr * head_lr_mult,
            },
        ]
        return [g for g in groups if g["params"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``. Returns logits ``[B, num_classes, H, W]``."""
        h, w = x.shape[-2:]
        x = pad_or_check(x, self.divisor, self.pad_input, type(self).__name__)
        logits = self.decoder(self.encoder(x))
        logits = F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


for _name, _variant in MSCAN_VARIANTS.items():
    NETWORKS.register(f"mcanet_{_name}", MCANet, **_variant)
# 0.19 M parameters: widths stay multiples of 32 for GroupNorm(32), one block per stage.
NETWORKS.register(
    "mcanet_tiny", MCANet, embed_dims=(32, 32, 64, 64), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)
)
