"""Convolutional building blocks."""

from __future__ import annotations

from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2, the U-Net stage block (Ronneberger et al. 2015, with BN).

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        norm_layer: normalisation class taking the channel count.
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d
    ):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )
