"""Classic U-Net (Ronneberger, Fischer, Brox, MICCAI 2015) with batch normalisation.

Four 2x2 max-poolings, widths ``base_width * (1, 2, 4, 8, 16)``, transposed-convolution up-sampling
and concatenated skips; 31.04 M parameters for 1 class at ``base_width=64``.
"""

from __future__ import annotations

import torch
from torch import nn

from networks.blocks.conv import DoubleConv
from networks.common import check_input_shape
from networks.registry import NETWORKS


class UNet(nn.Module):
    """U-Net.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary lesion segmentation).
        base_width: channels of the first stage; stage ``i`` has ``base_width * 2**i``.
        depth: number of poolings (input sides must be divisible by ``2**depth``).
        norm_layer: normalisation class used in every conv block.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        base_width: int = 64,
        depth: int = 4,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList([DoubleConv(in_channels, widths[0], norm_layer)])
        self.encoder.extend(DoubleConv(widths[i], widths[i + 1], norm_layer) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            DoubleConv(2 * widths[i], widths[i], norm_layer) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``, H and W divisible by ``2**depth``. Returns logits ``[B, K, H,
        W]``."""
        check_input_shape(x, 2**self.depth, type(self).__name__)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder, strict=True):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


NETWORKS.register("unet", UNet)
NETWORKS.register("unet_tiny", UNet, base_width=8, depth=3)
