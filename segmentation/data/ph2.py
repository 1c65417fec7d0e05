"""PH2 (Mendonca et al., EMBC 2013) in its official layout: 200 dermoscopic images, 768x560.

Layout (note the space in ``PH2 Dataset images``; ids are not contiguous)::

    PH2Dataset/
      PH2_dataset.txt                                  ||-delimited table (diagnoses, features)
      PH2 Dataset images/
        IMD002/IMD002_Dermoscopic_Image/IMD002.bmp     the image
        IMD002/IMD002_lesion/IMD002_lesion.bmp         the mask, 255 = lesion
        IMD002/IMD002_roi/...                          colour regions (ignored)

``root`` may be the folder holding ``PH2Dataset/`` or ``PH2Dataset`` itself. PH2's licence forbids
redistribution: dermseg ships no PH2 file, only the split definition.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from ..registry import DATASETS
from .files import MASK_SUFFIXES
from .layout import OfficialDataset, check_count, list_files, match_by_id, resolve_dir
from .splits import resolve_split

__all__ = ["PH2", "read_ph2_table"]

PH2_ID = r"(?P<id>IMD\d{3})"
CLINICAL = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}
X_COLUMNS = {
    "common nevus": "common_nevus",
    "atypical nevus": "atypical_nevus",
    "melanoma": "melanoma",
}


def read_ph2_table(path: Path) -> dict[str, dict]:
    """Parse ``PH2_dataset.txt``: id (upper case) -> ``{"clinical_diagnosis",
    "histological_diagnosis"}``.

    Table rows look like ``|| IMD003 ||  || 0 || ...``; the clinical diagnosis is coded 0/1/2
    (common nevus / atypical nevus / melanoma) in a ``Clinical Diagnosis`` column, or marked with
    ``X`` in ``Common Nevus`` / ``Atypical Nevus`` / ``Melanoma`` columns (both forms exist).
    """
    header: list[str] | None = None
    out: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip().startswith("||"):
            continue
        cells = [c.strip() for c in line.strip().split("||")[1:-1]]
        if not cells:
            continue
        if cells[0].lower() == "name":
            header = [c.lower() for c in cells]
            continue
        if header is None or not re.fullmatch(PH2_ID, cells[0], re.IGNORECASE):
            continue
        row = dict(zip(header, cells, strict=False))
        clinical = CLINICAL.get(row.get("clinical diagnosis", ""), "")
        for column, name in X_COLUMNS.items():
            if row.get(column, "").upper() == "X":
                clinical = name
        out[cells[0].upper()] = {
            "clinical_diagnosis": clinical or "unknown",
            "histological_diagnosis": row.get("histological diagnosis", ""),
        }
    return out


@DATASETS.register("ph2")
class PH2(OfficialDataset):
    """PH2: 200 images (80 common nevi, 80 atypical nevi, 40 melanomas).

    Args:
        root: folder holding ``PH2Dataset/`` (or ``PH2Dataset`` itself).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: see :class:`~segmentation.data.files.FileSegmentationDataset`.
        allow_partial: accept fewer than 200 pairs.
        split_name: ``"ph2_80_20_100"`` (seeded 80/20/100, see :mod:`segmentation.data.splits`)
            or ``"external"`` (``split="test"`` serves all 200 images, for ISIC-trained models;
            train/val are errors).
        seed: permutation seed of ``ph2_80_20_100`` (0 is the shipped definition) and K-fold.
        num_folds, fold, split_file: see :class:`~segmentation.data.isic.ISIC2018`.

    ``meta``: ``dataset``, ``clinical_diagnosis`` (common_nevus / atypical_nevus / melanoma),
    ``histological_diagnosis``.
    """

    dataset_name = "ph2"
    split_names = ("ph2_80_20_100", "external")
    total = 200

    def base_dir(self) -> Path:
        """The ``PH2Dataset`` folder (``root`` itself when it already is that folder)."""
        if (self.root / "PH2Dataset").is_dir():
            return resolve_dir(self.root, "PH2Dataset")
        return self.root

    def all_records(self) -> list[dict]:
        if self._records is not None:
            return self._records
        base = self.base_dir()
        cases = resolve_dir(base, "PH2 Dataset images", what="PH2 image folder")
        images, masks = [], []
        for case in sorted(p for p in cases.iterdir() if p.is_dir()):
            for sub in case.iterdir():
                name = sub.name.lower()
                if sub.is_dir() and name.endswith("_dermoscopic_image"):
                    images += list_files(sub)
                elif sub.is_dir() and name.endswith("_lesion"):
                    masks += list_files(sub, MASK_SUFFIXES)
        matched = match_by_id(
            images,
            masks,
            image_pattern=PH2_ID,
            mask_pattern=PH2_ID + "_lesion",
            mask_hint="{id}_lesion/{id}_lesion.bmp",
        )
        self.ignored += matched.ignored
        check_count(
            len(matched.records),
            self.total,
            dataset="ph2",
            what="all images",
            allow_partial=self.allow_partial,
        )
        table_path = base / "PH2_dataset.txt"
        table = read_ph2_table(table_path) if table_path.is_file() else {}
        if not table:
            warnings.warn(
                f"ph2: '{table_path}' is missing or has no rows; samples carry no diagnosis.",
                stacklevel=3,
            )
        for rec in matched.records:
            rec["meta"] = {"dataset": "ph2", **table.get(rec["id"].upper(), {})}
        self._records = matched.records
        return self._records

    def scheme_records(self, split: str, for_kfold: bool) -> list[dict]:
        records = self.all_records()
        if self.split_name == "external":
            if split == "test":
                return records
            if for_kfold:
                return []
            raise KeyError(
                f"ph2 split_name 'external' serves only split='test' (all {len(records)} images) "
                f"for models trained elsewhere; got split='{split}'. Use split_name "
                "'ph2_80_20_100' to train on PH2."
            )
        by_id = {r["id"]: r for r in records}
        ids = resolve_split(
            self.split_name, list(by_id), split, seed=self.seed, allow_partial=self.allow_partial
        )
        return [by_id[i] for i in ids]
