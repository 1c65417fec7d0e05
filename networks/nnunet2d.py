"""nnU-Net's 2-D U-Net (Isensee et al., Nature Methods 2021; "nnU-Net Revisited", MICCAI 2024)
assembled from MONAI ``DynUNet``.

As nnU-Net builds it: stages of two ``3x3 conv -> instance norm (affine) -> leaky ReLU (0.01)``
blocks (``residual=True``: MONAI's residual blocks, in encoder and decoder), down-sampling by the
first convolution's stride (no pooling), transposed-convolution up-sampling, widths ``base_width *
2**i`` capped at ``max_width`` (32 and 512 in nnU-Net 2-D), He initialisation (negative slope
0.01), and deep supervision heads on the decoder levels. The topology (``strides``,
``kernel_sizes``) comes from the data: ``segmentation.planning`` derives it as nnU-Net does
(down-sample until the feature map would fall under 4 px); the defaults are its plan for 128-px
inputs. The planner also chooses the intensity normalisation, applied here as the first step of
``forward`` so that training, prediction and export see the same input (``input_norm``): the
pipeline delivers ImageNet-normalised images, and ``"dataset"`` re-standardises each channel with
the training split's mean and standard deviation of that input (``input_mean``, ``input_std``),
``"per_image"`` with each image's own (nnU-Net's default for non-CT images).

Deep supervision: in training mode ``forward`` returns ``[full, 1/2, 1/4, ...]`` logits, each at
its own resolution, and ``compute_loss`` weighs their losses ``1, 1/2, 1/4, ...`` normalised,
against the mask resized by nearest neighbour (``networks.blocks.deep_supervision``). nnU-Net
also computes the lowest decoder level and gives it weight 0; this network does not build that
head (``deep_supervision_heads = stages - 3`` by default), so the loss is the same. In evaluation
mode (validation, prediction, export) ``forward`` returns the full-resolution logits only.

Differences from nnU-Net's ``PlainConvUNet``: MONAI's convolutions have no bias (instance norm
follows each one), and the residual variant is MONAI's ``UnetResBlock`` in every stage, not
nnU-Net's residual-encoder (ResEnc) layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn

from networks.blocks.deep_supervision import deep_supervision_loss
from networks.registry import NETWORKS

PairOrInt = int | Sequence[int]


def _pair(value: PairOrInt, name: str, index: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(
            f"{name}[{index}] must be a positive int or a pair [height, width] of them, got "
            f"{value!r}."
        )
    return pair  # type: ignore[return-value]


class NNUNet2D(nn.Module):
    """nnU-Net-style 2-D U-Net with deep supervision.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary lesion segmentation).
        strides: per stage, the stride of its first convolution (an int or ``[h, w]``); the first
            is 1 and the input sides must divide by the product. At least 3 stages.
        kernel_sizes: per stage, the convolution kernel (an int or ``[h, w]``); ``None`` for 3.
        base_width: channels of the first stage; stage ``i`` has ``base_width * 2**i``.
        max_width: cap on the channels of a stage.
        residual: residual blocks (MONAI ``UnetResBlock``) instead of plain double convolutions.
        deep_supervision: add auxiliary heads on the decoder levels (used in training only).
        deep_supervision_heads: number of auxiliary heads, from the 1/2 level down; ``None`` for
            nnU-Net's choice, every level but the lowest (``stages - 3``).
        dropout: dropout rate in every block (nnU-Net: 0).
        input_norm: ``"none"``, ``"dataset"`` (z-score per channel with ``input_mean`` and
            ``input_std``) or ``"per_image"`` (z-score per image and channel).
        input_mean, input_std: per-channel statistics of the network input over the training
            split (``input_norm="dataset"`` only; ``segmentation.planning`` measures them).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        strides: Sequence[PairOrInt] = (1, 2, 2, 2, 2, 2),
        kernel_sizes: Sequence[PairOrInt] | None = None,
        base_width: int = 32,
        max_width: int = 512,
        residual: bool = False,
        deep_supervision: bool = True,
        deep_supervision_heads: int | None = None,
        dropout: float = 0.0,
        input_norm: str = "none",
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.input_norm = input_norm
        if input_norm not in ("none", "dataset", "per_image"):
            raise ValueError(
                f"input_norm must be 'none', 'dataset' or 'per_image', got {input_norm!r}."
            )
        stats = (input_mean, input_std)
        if (input_norm == "dataset") != all(v is not None for v in stats):
            raise ValueError(
                "input_mean and input_std are given exactly when input_norm='dataset' (got "
                f"input_norm={input_norm!r}, input_mean={input_mean}, input_std={input_std})."
            )
        if input_norm == "dataset":
            if not len(input_mean) == len(input_std) == in_channels or min(input_std) <= 0:
                raise ValueError(
                    f"input_mean and input_std need {in_channels} values (one per input channel) "
                    f"and a positive std, got {list(input_mean)} and {list(input_std)}."
                )
            # buffers (saved with the weights, exported with the graph), not trained
            self.register_buffer("input_mean", torch.tensor(input_mean).view(1, -1, 1, 1))
            self.register_buffer("input_std", torch.tensor(input_std).view(1, -1, 1, 1))
        strides = [_pair(s, "strides", i) for i, s in enumerate(strides)]
        if len(strides) < 3 or strides[0] != (1, 1):
            raise ValueError(
                f"strides must list at least 3 stages, the first with stride 1 (DynUNet needs a "
                f"down- and an up-sampling stage), got {strides}; e.g. [1, 2, 2, 2, 2, 2]."
            )
        kernel_sizes = [3] * len(strides) if kernel_sizes is None else kernel_sizes
        kernels = [_pair(k, "kernel_sizes", i) for i, k in enumerate(kernel_sizes)]
        if len(kernels) != len(strides):
            raise ValueError(
                f"kernel_sizes has {len(kernels)} entries but strides has {len(strides)}; give one "
                "kernel per stage (or leave kernel_sizes out for 3x3 everywhere)."
            )
        if base_width < 1 or max_width < base_width:
            raise ValueError(
                f"need 1 <= base_width <= max_width, got base_width={base_width}, "
                f"max_width={max_width}."
            )
        most = len(strides) - 2  # DynUNet: fewer heads than up-sampling blocks
        heads = deep_supervision_heads
        if heads is None:  # nnU-Net: every decoder level but the lowest (its weight is 0)
            heads = max(0, len(strides) - 3)
        if not 0 <= heads <= most:
            raise ValueError(
                f"deep_supervision_heads must be in [0, {most}] for {len(strides)} stages, got "
                f"{heads}."
            )
        self.num_heads = heads if deep_supervision else 0
        self.divisor = tuple(math.prod(s[axis] for s in strides) for axis in (0, 1))
        self.unet = DynUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=[min(base_width * 2**i, max_width) for i in range(len(strides))],
            dropout=dropout or None,
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=self.num_heads > 0,
            deep_supr_num=max(1, self.num_heads),
            res_block=residual,
        )

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, C, H, W]`` with sides divisible by the
        product of the strides (the message gives the padded size)."""
        if x.ndim != 4:
            raise ValueError(f"NNUNet2D expects a [B, C, H, W] tensor, got {tuple(x.shape)}.")
        (h, w), (dh, dw) = x.shape[-2:], self.divisor
        if h % dh or w % dw:
            raise ValueError(
                f"NNUNet2D with strides {self.unet.strides} needs height divisible by {dh} and "
                f"width by {dw}, got {h}x{w}; pad or resize the input to "
                f"{-(-h // dh) * dh}x{-(-w // dw) * dw}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Args: x ``[B, C, H, W]``. Returns logits ``[B, K, H, W]``; in training mode with deep
        supervision the list ``[full, [B, K, H/2, W/2], [B, K, H/4, W/4], ...]``."""
        self.check_input_shape(x)
        if self.input_norm == "dataset":
            x = (x - self.input_mean) / self.input_std
        elif self.input_norm == "per_image":
            mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
            x = (x - mean) / (std + 1e-8)
        unet = self.unet
        # DynUNet.forward would upsample the auxiliary logits to full size and stack them; its
        # skip layers store each head's output at its own resolution in `unet.heads`.
        out = unet.output_block(unet.skip_layers(x))
        if self.training and self.num_heads:
            return [out, *unet.heads[: self.num_heads]]
        return out

    def compute_loss(self, batch: dict, loss_fn) -> tuple[torch.Tensor, dict]:
        """Deep-supervised loss of ``batch["image"]`` against ``batch["mask"]`` (long [B, H, W])."""
        return deep_supervision_loss(self(batch["image"]), batch["mask"], loss_fn)


NETWORKS.register("nnunet2d", NNUNet2D)
NETWORKS.register("nnunet2d_res", NNUNet2D, residual=True)
NETWORKS.register("nnunet2d_tiny", NNUNet2D, strides=(1, 2, 2, 2), base_width=4, max_width=16)
