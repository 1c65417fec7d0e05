"""MSCAN, the convolutional-attention encoder of SegNeXt (Guo et al., NeurIPS 2022).

Four stages at 1/4, 1/8, 1/16 and 1/32 of the input. A stem of two 3x3 stride-2 convolutions
opens stage 1, 3x3 stride-2 overlapping patch embeddings open stages 2-4. Every block is

    x = x + DropPath(ls1 * SpatialAttention(BN(x)))  # SpatialAttention has an inner residual
    x = x + DropPath(ls2 * ConvMlp(BN(x)))  # 1x1 -> 3x3 depthwise -> GELU -> 1x1

and the multi-scale convolutional attention (MSCA) gate multiplies its input with
``1x1(d + sum_k strip_k(d))``, ``d = 5x5 depthwise(x)``, strips ``1xk -> kx1`` depthwise for
k in 7, 11, 21. Each stage ends with a channel LayerNorm. The design follows mmsegmentation's
``mscan.py`` (the layout of the OpenMMLab ImageNet checkpoints, which :func:`load_mscan_pretrained`
reads); the code here is our own.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch
from timm.layers import DropPath, LayerNorm2d, LayerScale2d
from torch import nn

from networks.common import load_pretrained

# Variants of the SegNeXt paper (Table 1); MCANet uses the same encoders.
MSCAN_VARIANTS: dict[str, dict] = {
    "t": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4)),
    "s": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4)),
    "b": dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4)),
}


class MSCAGate(nn.Module):
    """Multi-scale convolutional attention: a depthwise 5x5 map plus depthwise strip pairs, mixed
    by a 1x1 convolution and used as a multiplicative gate on the input.

    Args:
        dim: channels.
        local_kernel_size: side of the square depthwise kernel (5 in SegNeXt).
        strip_kernel_sizes: lengths ``k`` of the ``1xk -> kx1`` depthwise strip pairs
            (7, 11, 21 in SegNeXt).
    """

    def __init__(
        self, dim: int, local_kernel_size: int = 5, strip_kernel_sizes: Sequence[int] = (7, 11, 21)
    ) -> None:
        super().__init__()
        self.local = nn.Conv2d(
            dim, dim, local_kernel_size, padding=local_kernel_size // 2, groups=dim
        )
        self.strips = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim),
                nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim),
            )
            for k in strip_kernel_sizes
        )
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        local = self.local(x)
        # The strips see the 5x5 output (not x), and the 5x5 output itself is part of the sum.
        attn = local + sum(strip(local) for strip in self.strips)
        return self.mix(attn) * x


class MSCASpatialAttention(nn.Module):
    """``1x1 -> act -> MSCA gate -> 1x1`` plus the (normalised) input: an MSCAN token mixer."""

    def __init__(
        self,
        dim: int,
        local_kernel_size: int = 5,
        strip_kernel_sizes: Sequence[int] = (7, 11, 21),
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = act_layer()
        self.gate = MSCAGate(dim, local_kernel_size, strip_kernel_sizes)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        return self.proj_out(self.gate(self.act(self.proj_in(x)))) + x


class ConvMlp(nn.Module):
    """Convolutional MLP of MSCAN (SegFormer's Mix-FFN): ``1x1 -> 3x3 depthwise -> act -> 1x1``."""

    def __init__(
        self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        return self.drop(self.fc2(self.drop(self.act(self.dwconv(self.fc1(x))))))


class MSCABlock(nn.Module):
    """One MSCAN block: pre-norm spatial attention and conv-MLP, each with layer scale, DropPath
    and residual.

    Args:
        dim: channels.
        mlp_ratio: hidden channels of the MLP as a multiple of ``dim``.
        drop_path: stochastic-depth probability of both residual branches.
        drop: dropout inside the MLP.
        layer_scale_init: initial value of the per-channel layer scales (1e-2 in SegNeXt).
        norm_layer: normalisation class taking the channel count (BatchNorm in SegNeXt).
        act_layer: activation class.
        local_kernel_size, strip_kernel_sizes: see :class:`MSCAGate`.
    """

    def __init__(
        self,
        dim: int,
        *,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        drop: float = 0.0,
        layer_scale_init: float = 1e-2,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.GELU,
        local_kernel_size: int = 5,
        strip_kernel_sizes: Sequence[int] = (7, 11, 21),
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MSCASpatialAttention(dim, local_kernel_size, strip_kernel_sizes, act_layer)
        self.ls1 = LayerScale2d(dim, layer_scale_init)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer, drop)
        self.ls2 = LayerScale2d(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _stem(in_channels: int, out_channels: int, norm_layer, act_layer) -> nn.Sequential:
    """Two 3x3 stride-2 convolutions: ``[B, C_in, H, W] -> [B, C_out, H/4, W/4]``."""
    mid = out_channels // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
        norm_layer(mid),
        act_layer(),
        nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
        norm_layer(out_channels),
    )


def _patch_embed(in_channels: int, out_channels: int, norm_layer) -> nn.Sequential:
    """Overlapping 3x3 stride-2 patch embedding: ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), norm_layer(out_channels)
    )


class MSCAN(nn.Module):
    """SegNeXt's multi-scale convolutional attention network as a 4-stage feature encoder.

    Guo, Lu, Hou, Liu, Cheng, Hu: "SegNeXt: Rethinking Convolutional Attention Design for Semantic
    Segmentation", NeurIPS 2022. Variants: :data:`MSCAN_VARIANTS` (T, S, B).

    Any input size works (the strided convolutions round up); sides divisible by 32 give stage maps
    of exactly 1/4, 1/8, 1/16 and 1/32 of the input.

    Args:
        in_channels: image channels.
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        mlp_ratios: MLP expansion per stage.
        drop_rate: dropout inside the MLPs.
        drop_path_rate: stochastic depth of the last block; grows linearly from 0 over all blocks.
        layer_scale_init: initial layer-scale value.
        norm_layer: normalisation of stem, patch embeddings and blocks (BatchNorm in SegNeXt).
        act_layer: activation class.
        local_kernel_size, strip_kernel_sizes: MSCA gate kernels, see :class:`MSCAGate`.
        pretrained: optional local path of an OpenMMLab MSCAN ImageNet checkpoint
            (see :func:`load_mscan_pretrained`).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (3, 3, 5, 2),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        layer_scale_init: float = 1e-2,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.GELU,
        local_kernel_size: int = 5,
        strip_kernel_sizes: Sequence[int] = (7, 11, 21),
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if not len(embed_dims) == len(depths) == len(mlp_ratios) == 4:
            raise ValueError(
                "MSCAN has 4 stages: embed_dims, depths and mlp_ratios need 4 entries each, got "
                f"{len(embed_dims)}, {len(depths)}, {len(mlp_ratios)}."
            )
        self.embed_dims = tuple(embed_dims)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embeds = nn.ModuleList(
            [_stem(in_channels, embed_dims[0], norm_layer, act_layer)]
        )
        self.patch_embeds.extend(
            _patch_embed(embed_dims[i - 1], embed_dims[i], norm_layer) for i in range(1, 4)
        )
        self.stages = nn.ModuleList()
        for i in range(4):
            start = sum(depths[:i])
            self.stages.append(
                nn.Sequential(
                    *(
                        MSCABlock(
                            embed_dims[i],
                            mlp_ratio=mlp_ratios[i],
                            drop_path=rates[start + j],
                            drop=drop_rate,
                            layer_scale_init=layer_scale_init,
                            norm_layer=norm_layer,
                            act_layer=act_layer,
                            local_kernel_size=local_kernel_size,
                            strip_kernel_sizes=strip_kernel_sizes,
                        )
                        for j in range(depths[i])
                    )
                )
            )
        # SegNeXt closes each stage with a LayerNorm over channels (eps 1e-5 as nn.LayerNorm).
        self.norms = nn.ModuleList(LayerNorm2d(d, eps=1e-5) for d in embed_dims)
        self.apply(_init_weights)
        if pretrained is not None:
            load_mscan_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``[B, C, H, W]``.

        Returns:
            The four stage maps ``[B, embed_dims[i], H / 2**(i+2), W / 2**(i+2)]``.
        """
        features = []
        for embed, stage, norm in zip(self.patch_embeds, self.stages, self.norms, strict=True):
            x = norm(stage(embed(x)))
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    """SegNeXt's initialisation: He-normal convolutions over (grouped) fan-out, unit LayerNorms."""
    if isinstance(module, nn.Conv2d):
        fan_out = (
            module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        )
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# OpenMMLab layout -> ours. Order matters: specific block rules before the generic ones.
_MSCAN_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed1\.proj\.", "patch_embeds.0."),
    (r"^patch_embed([234])\.proj\.", lambda m: f"patch_embeds.{int(m[1]) - 1}.0."),
    (r"^patch_embed([234])\.norm\.", lambda m: f"patch_embeds.{int(m[1]) - 1}.1."),
    (r"^block(\d)\.", lambda m: f"stages.{int(m[1]) - 1}."),
    (r"^norm(\d)\.", lambda m: f"norms.{int(m[1]) - 1}."),
    (r"\.attn\.proj_1\.", ".attn.proj_in."),
    (r"\.attn\.proj_2\.", ".attn.proj_out."),
    (r"\.attn\.spatial_gating_unit\.conv0\.", ".attn.gate.local."),
    (
        r"\.attn\.spatial_gating_unit\.conv(\d)_([12])\.",
        lambda m: f".attn.gate.strips.{m[1]}.{int(m[2]) - 1}.",
    ),
    (r"\.attn\.spatial_gating_unit\.conv3\.", ".attn.gate.mix."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"\.layer_scale_([12])$", lambda m: f".ls{m[1]}.gamma"),
)


def mscan_key_map(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenMMLab MSCAN state dict to :class:`MSCAN` keys.

    OpenMMLab keys look like ``patch_embed1.proj.0.weight``, ``patch_embed2.norm.running_mean``,
    ``block1.0.attn.spatial_gating_unit.conv0.weight``, ``block1.0.layer_scale_1``,
    ``norm1.weight``.
    A ``backbone.`` prefix (full mmsegmentation segmentor checkpoints) is stripped; other keys (e.g.
    the ImageNet classifier ``head.*``) pass through unchanged and are reported as unexpected.
    """
    out = {}
    for key, value in state.items():
        new = key.removeprefix("backbone.")
        for pattern, repl in _MSCAN_KEY_RULES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def load_mscan_pretrained(
    model_or_encoder: nn.Module, path: str | os.PathLike
) -> tuple[list[str], list[str]]:
    """Load OpenMMLab MSCAN ImageNet weights from a local file (``mscan_t_20230227-119e8c9f.pth``).

    Args:
        model_or_encoder: an :class:`MSCAN`, or a network holding one as ``.encoder`` (``MCANet``).
        path: the checkpoint (a state dict, or a dict with it under ``state_dict``/``model``).

    Returns:
        ``(missing, unexpected)`` keys after renaming; the ImageNet classifier (``head.*``) is the
        only unexpected prefix allowed, and nothing may be missing.

    Raises:
        TypeError: the module is neither an MSCAN nor holds one as ``.encoder``.
        FileNotFoundError, RuntimeError: see :func:`networks.common.load_pretrained`.
    """
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    if not isinstance(encoder, MSCAN):
        raise TypeError(
            f"load_mscan_pretrained expects an MSCAN or a network with an MSCAN `.encoder`, got "
            f"{type(model_or_encoder).__name__}; pass the model that contains the MSCAN encoder."
        )
    return load_pretrained(encoder, path, key_map=mscan_key_map, allowed_unexpected=("head.",))
