"""U-Net from segmentation-models-pytorch (Iakubovskii 2019) with a ResNet encoder.

Weights are never downloaded: ``encoder_weights`` is a local path to torchvision/timm-style ResNet
weights (``conv1.weight``, ``layer1.0.conv1.weight``, ... as in ``resnet34-*.pth``) or ``None``.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from networks.common import check_input_shape, load_pretrained
from networks.registry import NETWORKS


class SMPUNet(nn.Module):
    """smp ``Unet`` behind the dermseg contract.

    Args:
        in_channels: image channels.
        num_classes: output channels.
        encoder_name: smp encoder name (``resnet34``, ``resnet18``, ...).
        encoder_depth: number of encoder stages (input sides must be divisible by
        ``2**encoder_depth``).
        decoder_channels: decoder widths, one per stage.
        encoder_weights: local path to ImageNet weights for the encoder, or ``None``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.divisor = 2**encoder_depth
        self.model = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None,
            encoder_depth=encoder_depth,
            decoder_channels=tuple(decoder_channels),
            in_channels=in_channels,
            classes=num_classes,
        )
        if encoder_weights is not None:
            # ImageNet files carry the classifier ("fc."), which smp encoders delete.
            load_pretrained(self.model.encoder, encoder_weights, allowed_unexpected=("fc.",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``. Returns logits ``[B, K, H, W]``."""
        check_input_shape(x, self.divisor, type(self).__name__)
        return self.model(x)


NETWORKS.register("smp_unet", SMPUNet)
# timm ResNet-10-T through the smp "tu-" bridge: a real ResNet encoder, 0.4 M parameters, for tests.
NETWORKS.register(
    "smp_unet_tiny",
    SMPUNet,
    encoder_name="tu-resnet10t",
    encoder_depth=3,
    decoder_channels=(32, 16, 8),
)
