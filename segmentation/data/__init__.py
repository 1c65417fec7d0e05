"""Datasets, transforms and skin-tone colour science.

Importing this package registers the datasets: ``synthetic`` (the embedded generator) and
``paired_folder`` (a generic images/ + masks/ tree); the real-dataset loaders register themselves
the same way.
"""

from ..registry import DATASETS
from . import color, files, synthetic, transforms
from .files import FileSegmentationDataset, PairedFolder, collate, read_image, read_mask
from .synthetic import SyntheticDermoscopy, generate_sample, write_isic2018_layout
from .transforms import build_transform, worker_init_fn

__all__ = [
    "DATASETS",
    "FileSegmentationDataset",
    "PairedFolder",
    "SyntheticDermoscopy",
    "build_transform",
    "collate",
    "color",
    "files",
    "generate_sample",
    "read_image",
    "read_mask",
    "synthetic",
    "transforms",
    "worker_init_fn",
    "write_isic2018_layout",
]
