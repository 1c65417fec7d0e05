"""DDI (Daneshjou et al., Sci. Adv. 2022) clinical photographs with FEDD segmentation label maps.

Layout: ``root/images/000001.png ...``, ``root/ddi_metadata.csv`` (``DDI_file``, ``skin_tone``
in {12, 34, 56}, ``malignant``, ``disease``) and label maps
``root/masks/<image stem><mask_suffix>.npy`` with values 0 background, 1 lesion, 2 marker,
3 ruler, 4 skin. DDI has no official split; it serves as an external test set with Fitzpatrick
groups (``split="test"``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np

from ..registry import DATASETS
from .files import MASK_SUFFIXES, read_image
from .layout import OfficialDataset, check_count, list_files, match_by_id, resolve_dir

__all__ = ["DDI", "FEDD_LABELS", "FITZPATRICK"]

FEDD_LABELS = {0: "background", 1: "lesion", 2: "marker", 3: "ruler", 4: "skin"}
FITZPATRICK = {"12": "I-II", "34": "III-IV", "56": "V-VI"}


@DATASETS.register("ddi")
class DDI(OfficialDataset):
    """DDI images with FEDD label maps.

    Args:
        root: folder holding ``image_dir``, ``mask_dir`` and ``ddi_metadata.csv``.
        split: only ``"test"`` (DDI is an external test set).
        transform: see :class:`~segmentation.data.files.FileSegmentationDataset`.
        allow_partial: accept a count other than the 656 DDI images.
        split_name: ``"external"``.
        labels: ``"lesion"`` (binary mask, lesion = 1) or ``"all"`` (the label map 0..4, five
            output classes; metrics score class 1, the lesion).
        image_dir, mask_dir, mask_suffix: where the files are, and the text between the image stem
            and ``.npy`` in mask names.
        seed, num_folds, fold, split_file: see :class:`~segmentation.data.isic.ISIC2018`.

    ``meta``: ``dataset``, ``fitzpatrick`` (I-II / III-IV / V-VI), ``skin_tone`` (12 / 34 / 56),
    ``malignant``, ``disease``.
    """

    dataset_name = "ddi"
    split_names = ("external",)
    total = 656
    mask_lesion_value = 1
    scan_defaults = {
        "labels": "lesion",
        "image_dir": "images",
        "mask_dir": "masks",
        "mask_suffix": "",
    }

    def __init__(
        self,
        *,
        root: str | None = None,
        split: str = "test",
        transform=None,
        allow_partial: bool = False,
        split_name: str = "external",
        labels: str = "lesion",
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_suffix: str = "",
        seed: int = 0,
        num_folds: int = 0,
        fold: int = 0,
        split_file: str | None = None,
    ) -> None:
        if labels not in ("lesion", "all"):
            raise ValueError(f"ddi labels must be 'lesion' or 'all', got '{labels}'.")
        self.labels, self.num_classes = labels, (1 if labels == "lesion" else len(FEDD_LABELS))
        self.image_dir, self.mask_dir, self.mask_suffix = image_dir, mask_dir, mask_suffix
        super().__init__(
            root=root,
            split=split,
            transform=transform,
            allow_partial=allow_partial,
            split_name=split_name,
            seed=seed,
            num_folds=num_folds,
            fold=fold,
            split_file=split_file,
        )
        self.num_classes = 1 if labels == "lesion" else len(FEDD_LABELS)

    def all_records(self) -> list[dict]:
        if self._records is not None:
            return self._records
        images = list_files(resolve_dir(self.root, self.image_dir, what="DDI image folder"))
        masks = list_files(
            resolve_dir(self.root, self.mask_dir, what="FEDD mask folder"), MASK_SUFFIXES
        )
        matched = match_by_id(
            images,
            masks,
            image_pattern=r"(?P<id>\d{6})",
            mask_pattern=r"(?P<id>\d{6})" + re.escape(self.mask_suffix),
            mask_hint="{id}" + self.mask_suffix + ".npy",
        )
        self.ignored += matched.ignored
        check_count(
            len(matched.records),
            self.total,
            dataset="ddi",
            what="all images",
            allow_partial=self.allow_partial,
        )
        path = self.root / "ddi_metadata.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"ddi: '{path}' is missing; it gives each image's Fitzpatrick group. Copy it from "
                "the DDI download."
            )
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = {Path(row["DDI_file"]).stem: row for row in csv.DictReader(f)}
        for rec in matched.records:
            row = table.get(rec["id"])
            if row is None:
                raise KeyError(f"ddi: image '{rec['image']}' has no row in '{path}'.")
            tone = str(row.get("skin_tone", "")).strip()
            if tone not in FITZPATRICK:
                raise ValueError(
                    f"ddi: skin_tone '{tone}' of '{rec['id']}' in '{path}'; expected 12, 34 or 56."
                )
            rec["meta"] = {
                "dataset": "ddi",
                "fitzpatrick": FITZPATRICK[tone],
                "skin_tone": int(tone),
                "malignant": str(row.get("malignant", "")).strip().lower() in ("true", "1"),
                "disease": row.get("disease", ""),
            }
        self._records = matched.records
        return self._records

    def scheme_records(self, split: str, for_kfold: bool) -> list[dict]:
        if split == "test":
            return self.all_records()
        if for_kfold:
            return []
        raise KeyError(
            f"ddi serves only split='test' (an external test set); got split='{split}'. Train on "
            "another dataset, or give a split_file with your own train/val ids."
        )

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        if self.labels == "lesion":
            return super().load(index)
        rec = self.records[index]
        image = read_image(rec["image"])
        if rec["mask"].lower().endswith(".npy"):
            labels = np.load(rec["mask"], allow_pickle=False)
        else:  # a label map saved as an 8-bit image: read the values unchanged
            labels = cv2.imread(rec["mask"], cv2.IMREAD_UNCHANGED)
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape != image.shape[:2] or labels.max() >= len(FEDD_LABELS):
            raise ValueError(
                f"ddi label map '{rec['mask']}' has shape {labels.shape} and values up to "
                f"{labels.max()}; expected {image.shape[:2]} with labels 0..4."
            )
        return image, labels.astype(np.uint8), dict(rec["meta"])
