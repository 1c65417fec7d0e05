"""dermseg networks: interchangeable segmenters, importable without the training library.

Every network follows one contract: ``Net(*, in_channels, num_classes, ...)`` and
``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]``.

Example:
    >>> import networks
    >>> net = networks.build_network("unet_tiny", in_channels=3, num_classes=1)
"""

from networks.registry import Registry

NETWORKS = Registry("network")

# Each network module registers its variants on import; keep one import line per module here.
from networks.unet import UNet  # noqa: E402
from networks.smp_unet import SMPUNet  # noqa: E402

# -- network modules (one line each, added as networks land) --
from networks.swin_unet import SwinUNet  # noqa: E402
from networks.att_swinunet import AttSwinUNet  # noqa: E402
from networks.mcanet import MCANet  # noqa: E402
from networks.segdt import SegDT  # noqa: E402
from networks.iscf import ISCF  # noqa: E402
from networks.transdae import TransDAE  # noqa: E402
from networks.sam_adapter import SAMAdapter  # noqa: E402
from networks.medsam_ca import MedSAMCA  # noqa: E402
from networks.sam2_adapter import SAM2Adapter  # noqa: E402


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
]
