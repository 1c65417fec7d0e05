"""ISIC 2016 / 2017 / 2018 Task 1 and HAM10000 (Tschandl masks) in their official layouts.

Folder names, mask suffixes and counts are those of the official downloads (``docs/datasets.md``).
All four share one id-matching routine (:func:`scan_pairs`): ``ISIC_<7 digits>`` image stems,
masks named ``ISIC_<id>_segmentation`` in any case (ISIC 2016 writes ``_Segmentation``), other
image files (``*_superpixels.png`` of ISIC 2017) and non-image files (metadata CSVs,
``ATTRIBUTION.txt``, ``LICENSE.txt``) ignored, one doubled folder level tolerated.

Examples:
    >>> ds = DATASETS.build("isic2018", root="/data/isic2018", split="val")
    >>> ds = DATASETS.build("isic2018", root="/data/isic2018", split="train",
    ...                     split_name="isic2018_1815_259_520")
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from ..registry import DATASETS
from .files import MASK_SUFFIXES
from .layout import Matched, OfficialDataset, check_count, list_files, match_by_id, resolve_dir
from .splits import resolve_split

__all__ = ["ISIC_ID", "scan_pairs", "ISICTask1", "ISIC2016", "ISIC2017", "ISIC2018", "HAM10000"]

ISIC_ID = r"(?P<id>ISIC_\d{7})"
MASK_ID = ISIC_ID + r"_segmentation"


def scan_pairs(root: Path, image_dirs: list[str], mask_dir: str) -> Matched:
    """Match ``ISIC_<id>`` images in ``root/<image_dirs>`` to masks in ``root/<mask_dir>``."""
    images = [p for d in image_dirs for p in list_files(resolve_dir(root, d, what="image folder"))]
    masks = list_files(resolve_dir(root, mask_dir, what="mask folder"), MASK_SUFFIXES)
    return match_by_id(
        images,
        masks,
        image_pattern=ISIC_ID,
        mask_pattern=MASK_ID,
        mask_hint="{id}_segmentation.png",
    )


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f) if row]


class ISICTask1(OfficialDataset):
    """Base of the ISIC Task 1 releases; see :class:`ISIC2018` for the arguments.

    Subclasses give ``folders`` (official split -> (image folder, mask folder)), ``counts`` and
    optionally ``diagnosis_files`` (official split -> Part 3 ground-truth CSV in the root).
    """

    folders: dict[str, tuple[str, str]] = {}
    counts: dict[str, int] = {}
    diagnosis_files: dict[str, str] = {}

    def official(self, split: str) -> list[dict]:
        """Count-checked records of an official split folder (cached)."""
        if split not in self._scanned:
            image_dir, mask_dir = self.folders[split]
            matched = scan_pairs(self.root, [image_dir], mask_dir)
            self.ignored += matched.ignored
            check_count(
                len(matched.records),
                self.counts.get(split),
                dataset=self.dataset_name,
                what=f"the official '{split}' split ({image_dir})",
                allow_partial=self.allow_partial,
            )
            meta = self.metadata(split)
            for rec in matched.records:
                rec["meta"] = {
                    "dataset": self.dataset_name,
                    "official_split": split,
                    **meta.get(rec["id"].upper(), {}),
                }
            self._scanned[split] = matched.records
        return self._scanned[split]

    def metadata(self, split: str) -> dict[str, dict]:
        """Per-id metadata of an official split (id in upper case -> flat dict); optional files."""
        out: dict[str, dict] = {}
        name = self.diagnosis_files.get(split)
        path = self.root / name if name else None
        if path is None or not path.is_file():
            return out
        rows = _read_csv(path)
        if rows and rows[0][0].lower() == "image_id":  # 2017: image_id,melanoma,seborrheic_k.
            for row in rows[1:]:
                mel, sk = (float(v) > 0.5 for v in row[1:3])
                dx = "melanoma" if mel else ("seborrheic_keratosis" if sk else "nevus")
                out[row[0].upper()] = {"diagnosis": dx}
        else:  # 2016: no header; benign/malignant words (training) or 0/1 (test)
            for row in rows:
                label = row[1].strip().lower()
                malignant = label == "malignant" or (
                    label not in ("benign",) and float(label) > 0.5
                )
                out[row[0].upper()] = {"diagnosis": "malignant" if malignant else "benign"}
        return out

    def scheme_records(self, split: str, for_kfold: bool) -> list[dict]:
        if self.split_name == "official":
            if split not in self.folders:
                if for_kfold:
                    return []
                raise KeyError(
                    f"{self.dataset_name} has no official '{split}' split (official: "
                    f"{', '.join(self.folders)}). Hold out a validation fold of the training set "
                    "with num_folds=5 (and fold=0..4)."
                )
            return self.official(split)
        pool = self.official("train")
        if self.allow_partial and len(pool) != self.counts["train"]:
            warnings.warn(
                f"{self.split_name} computed from a partial copy ({len(pool)} images) is not the "
                "published split; use it for smoke tests only.",
                stacklevel=4,
            )
        by_id = {r["id"]: r for r in pool}
        ids = resolve_split(
            self.split_name, list(by_id), split, seed=self.seed, allow_partial=self.allow_partial
        )
        return [by_id[i] for i in ids]

    def all_records(self) -> list[dict]:
        out = []
        for split, (image_dir, _) in self.folders.items():
            if (self.root / image_dir).is_dir():
                out += self.official(split)
        return out


@DATASETS.register("isic2016")
class ISIC2016(ISICTask1):
    """ISIC 2016 (ISBI 2016) Part 1: 900 train / 379 test, capital-S ``_Segmentation`` masks.

    There is no official validation split: ``split="val"`` needs ``num_folds`` (a seeded K-fold of
    the training set). Metadata: ``diagnosis`` (benign/malignant) when the Part 3 ground-truth CSVs
    lie in the root. Arguments as :class:`ISIC2018`.
    """

    dataset_name = "isic2016"
    folders = {
        "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    }
    counts = {"train": 900, "test": 379}
    diagnosis_files = {
        "train": "ISBI2016_ISIC_Part3_Training_GroundTruth.csv",
        "test": "ISBI2016_ISIC_Part3_Test_GroundTruth.csv",
    }


@DATASETS.register("isic2017")
class ISIC2017(ISICTask1):
    """ISIC 2017 Task 1: 2000 train / 150 val / 600 test (the ``Test_v2`` release).

    The image folders also hold ``*_superpixels.png`` and a metadata CSV (ignored as images; the
    CSV's ``age_approximate`` and ``sex`` go into ``meta``). ``diagnosis`` (melanoma / seborrheic
    keratosis / nevus) comes from the Part 3 ground-truth CSVs when they lie in the root.
    Arguments as :class:`ISIC2018`.
    """

    dataset_name = "isic2017"
    folders = {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    }
    counts = {"train": 2000, "val": 150, "test": 600}
    diagnosis_files = {
        "train": "ISIC-2017_Training_Part3_GroundTruth.csv",
        "val": "ISIC-2017_Validation_Part3_GroundTruth.csv",
        "test": "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
    }

    def metadata(self, split: str) -> dict[str, dict]:
        out = super().metadata(split)
        folder = resolve_dir(self.root, self.folders[split][0])
        for path in sorted(folder.glob("*_metadata.csv")):
            rows = _read_csv(path)
            header = [h.strip().lower() for h in rows[0]] if rows else []
            if "image_id" not in header:
                continue
            for row in rows[1:]:
                values = dict(zip(header, row, strict=False))
                extra = {k: values[k] for k in ("age_approximate", "sex") if k in values}
                out.setdefault(values["image_id"].upper(), {}).update(extra)
        return out


@DATASETS.register("isic2018")
class ISIC2018(ISICTask1):
    """ISIC 2018 Task 1: 2594 train / 100 val / 1000 test.

    Args:
        root: folder holding ``ISIC2018_Task1-2_Training_Input/``,
            ``ISIC2018_Task1_Training_GroundTruth/`` and the validation/test pairs, as unpacked from
            the official zips.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: see :class:`~segmentation.data.files.FileSegmentationDataset`.
        allow_partial: accept counts that differ from the official ones (a partial copy).
        split_name: ``"official"`` (the challenge's folders) or ``"isic2018_1815_259_520"`` (the
            training set cut on sorted ids; see :mod:`segmentation.data.splits`).
        seed: seed of the K-fold permutation (and of seeded split schemes).
        num_folds, fold: ``num_folds > 0`` serves fold ``fold`` of a seeded K-fold of the scheme's
            train + val as ``val`` and the other folds as ``train``; test is unchanged.
        split_file: a JSON of id lists (``{"train": [...], ...}``) to use instead of the scheme,
            e.g. to reproduce another paper's exact split.

    Items: ``{"image", "mask", "id": "ISIC_0000000", "meta": {"dataset", "official_split"}}``.
    """

    dataset_name = "isic2018"
    split_names = ("official", "isic2018_1815_259_520")
    folders = {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    }
    counts = {"train": 2594, "val": 100, "test": 1000}


@DATASETS.register("ham10000")
class HAM10000(OfficialDataset):
    """HAM10000 (Tschandl et al., Sci. Data 2018) with the Tschandl lesion masks: 10015 images.

    Layout: ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/`` (``ISIC_<id>.jpg``),
    ``HAM10000_segmentations_lesion_tschandl/ISIC_<id>_segmentation.png`` and
    ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,dx_type,age,sex,localization``). There is no
    official split: ``ham10000_lesion`` groups images by ``lesion_id`` (70/10/20 % of the images,
    seeded); K-fold (``num_folds``) is grouped by lesion too. ``meta``: ``lesion_id``, ``dx``
    (diagnosis), ``dx_type``, ``age``, ``sex``, ``localization``. Arguments as :class:`ISIC2018`.
    """

    dataset_name = "ham10000"
    split_names = ("ham10000_lesion",)
    image_dirs = ("HAM10000_images_part_1", "HAM10000_images_part_2")
    mask_dir = "HAM10000_segmentations_lesion_tschandl"
    metadata_file = "HAM10000_metadata.csv"
    total = 10015

    def all_records(self) -> list[dict]:
        if self._records is None:
            matched = scan_pairs(self.root, list(self.image_dirs), self.mask_dir)
            self.ignored += matched.ignored
            check_count(
                len(matched.records),
                self.total,
                dataset=self.dataset_name,
                what="all images",
                allow_partial=self.allow_partial,
            )
            path = self.root / self.metadata_file
            if not path.is_file():
                raise FileNotFoundError(
                    f"ham10000: '{path}' is missing; it gives each image's lesion_id, which the "
                    "lesion-grouped split needs. Copy it from the HAM10000 download."
                )
            rows = _read_csv(path)
            header = [h.strip() for h in rows[0]]
            table = {
                r[header.index("image_id")].upper(): dict(zip(header, r, strict=False))
                for r in rows[1:]
            }
            for rec in matched.records:
                info = table.get(rec["id"].upper())
                if info is None:
                    raise KeyError(
                        f"ham10000: image '{rec['image']}' has no row in '{path}'; the metadata "
                        "file does not belong to these images."
                    )
                info.pop("image_id", None)
                rec["meta"] = {"dataset": "ham10000", **info}
            self._records = matched.records
        return self._records

    def groups(self) -> dict[str, str]:
        return {r["id"]: r["meta"]["lesion_id"] for r in self.all_records()}

    def scheme_records(self, split: str, for_kfold: bool) -> list[dict]:
        by_id = {r["id"]: r for r in self.all_records()}
        ids = resolve_split(
            self.split_name,
            list(by_id),
            split,
            seed=self.seed,
            groups=self.groups(),
            allow_partial=self.allow_partial,
        )
        return [by_id[i] for i in ids]
