"""Datasets, transforms and skin-tone colour science.

Importing this package registers the datasets: ``synthetic`` (the embedded generator) and
``paired_folder`` (a generic images/ + masks/ tree); the real-dataset loaders register themselves
the same way: ``isic2016``, ``isic2017``, ``isic2018``, ``ham10000`` (:mod:`.isic`), ``ph2``
(:mod:`.ph2`) and ``ddi`` (:mod:`.ddi`).
"""

from ..registry import DATASETS
from . import color, ddi, files, isic, layout, ph2, splits, synthetic, transforms
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
    "ddi",
    "files",
    "generate_sample",
    "isic",
    "layout",
    "ph2",
    "read_image",
    "read_mask",
    "splits",
    "synthetic",
    "transforms",
    "worker_init_fn",
    "write_isic2018_layout",
]
