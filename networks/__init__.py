"""dermseg networks: interchangeable segmenters, importable without the training library.

Every network follows one contract: ``Net(*, in_channels, num_classes, ...)`` and
``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]``.

Example:
    >>> import networks
    >>> net = networks.build_network("unet_tiny", in_channels=3, num_classes=1)
"""

# Each network module registers its variants in NETWORKS on import: one import line per module.
from networks.att_swinunet import AttSwinUNet
from networks.iscf import ISCF
from networks.mcanet import MCANet
from networks.nnunet2d import NNUNet2D
from networks.registry import NETWORKS
from networks.sam.medsam_ca import MedSAMCA
from networks.sam.sam2_adapter import SAM2Adapter
from networks.sam.sam3_adapter import SAM3Adapter
from networks.sam.sam_adapter import SAMAdapter
from networks.segdt.model import SegDT
from networks.smp_unet import SMPUNet
from networks.swin_unet import SwinUNet
from networks.transdae import TransDAE
from networks.unet import UNet


def build_network(name: str, **kwargs):
    """Build a registered network; unknown names and arguments raise with suggestions."""
    return NETWORKS.build(name, **kwargs)


def list_networks() -> list[str]:
    """Names of every registered network variant."""
    return NETWORKS.names()


__all__ = [
    "NETWORKS",
    "build_network",
    "list_networks",
    "UNet",
    "NNUNet2D",
    "SwinUNet",
    "AttSwinUNet",
    "SMPUNet",
    "MCANet",
    "SegDT",
    "ISCF",
    "TransDAE",
    "SAMAdapter",
    "MedSAMCA",
    "SAM2Adapter",
    "SAM3Adapter",
]
