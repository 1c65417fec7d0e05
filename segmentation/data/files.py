"""On-disk datasets: image/mask readers, the base dataset class, a generic paired-folder dataset.

Every real-data loader (ISIC, PH2, HAM10000, DDI) builds a list of records ``{"id", "image", "mask",
"meta"}`` and hands it to :class:`FileSegmentationDataset`, which reads, checks and transforms one
pair per item.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..registry import DATASETS
from .transforms import build_transform

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "list_files",
    "read_image",
    "read_mask",
    "FileSegmentationDataset",
    "PairedFolder",
    "collate",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
DEFAULT_MASK_THRESHOLD = 128  # the official ISIC scorer's rule


def list_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Files of ``folder`` (not recursive) with one of ``suffixes`` (any case), sorted by name.

    Hidden files are skipped: ``._ISIC_0000000.jpg`` (macOS resource forks, which copies from a
    Mac leave beside every file) and ``.DS_Store`` are not images.
    """
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def _check_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        where = "it is a folder" if path.is_dir() else "it does not exist"
        raise FileNotFoundError(
            f"{what} file '{path}' cannot be read: {where}. Check the data root."
        )
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as ``uint8 [H, W, 3]`` (grey images are expanded, alpha is dropped).

    Accepts anything OpenCV decodes (png, jpg, bmp, tif) and ``.npy`` arrays (``[H, W]`` or ``[H, W,
    3]`` uint8). Raises ``FileNotFoundError`` for a missing file and ``DataError`` (a
    ``ValueError``) naming the file when it is empty, truncated or not an image.
    """
    path = _check_file(path, "image")
    if path.suffix.lower() == ".npy":
        array = _load_npy(path)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise DataError(
                f"image '{path}' holds a {array.dtype} array of shape {array.shape}; "
                "expected uint8 [H, W] or [H, W, 3]."
            )
        return array
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(
            f"image '{path}' ({data.size} bytes) could not be decoded: the file is empty, "
            "truncated or not an image. Re-copy or re-download it."
        )
    return np.ascontiguousarray(image[..., ::-1])


def read_mask(
    path: str | os.PathLike, threshold: int | None = None, *, lesion_value: int | None = None
) -> np.ndarray:
    """Read a binary mask as ``uint8 [H, W]`` in {0, 1}.

    Image files are read as grey and binarised with ``> threshold``. ``threshold=None`` uses 128
    (the official ISIC scorer's rule, robust to JPEG and resampling) and refuses a mask whose
    maximum is 1..128: such a mask (typically stored as {0, 1}) would silently read as empty.
    ``.npy`` files: boolean arrays are used as they are; label maps (e.g. the FEDD maps of DDI)
    need ``lesion_value``, which selects ``== lesion_value``; other arrays are thresholded.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is not a readable mask, or its maximum is 1..128 with the default
            threshold (the message gives the fix: ``data.mask_threshold``).
    """
    path = _check_file(path, "mask")
    if path.suffix.lower() == ".npy":
        mask = _load_npy(path)
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2:
            raise DataError(f"mask '{path}' has shape {mask.shape}; expected a 2-D [H, W] array.")
        if lesion_value is None and mask.dtype == bool:
            return mask.astype(np.uint8)
    else:
        data = np.fromfile(path, dtype=np.uint8)
        mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
        if mask is None:
            raise DataError(
                f"mask '{path}' ({data.size} bytes) could not be decoded: the file is empty, "
                "truncated or not an image. Re-copy or re-download it."
            )
    if lesion_value is not None:
        return (mask == lesion_value).astype(np.uint8)
    if threshold is None:
        threshold, peak = DEFAULT_MASK_THRESHOLD, mask.max(initial=0)
        if 0 < peak <= threshold:
            raise DataError(
                f"mask '{path}' has maximum value {peak}, so with the rule 'lesion = value > "
                f"{threshold}' it would read as empty. If its masks are stored as 0 and 1 (or "
                "with small label values), set data.mask_threshold: 0; if these are faint "
                f"artefacts of an empty mask, set data.mask_threshold: {threshold} to accept it."
            )
    return (mask > threshold).astype(np.uint8)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"'{path}' is not a readable .npy array ({err}); re-create the file."
        ) from err


class FileSegmentationDataset(Dataset):
    """Image/mask pairs on disk, read on demand.

    Args:
        records: list of ``{"id": str, "image": path, "mask": path, "meta": dict}``; ``meta`` is
            optional and must be flat (str/int/float/bool values) so it goes into ``per_image.csv``
            unchanged.
        transform: ``(image uint8 [H, W, 3], mask uint8 [H, W]) -> (image float32 [3, H, W], mask
            int64 [H, W])``; default: ImageNet normalisation at the stored size.
        num_classes: channels of the network output (1 for binary lesion segmentation).
        in_channels: image channels (3).

    Items are ``{"image": float32 [3, H, W], "mask": int64 [H, W], "id": str, "meta": dict}``.
    """

    # None: 128 with the {0, 1}-mask check of read_mask; set per instance by data.mask_threshold
    mask_threshold: int | None = None
    mask_lesion_value: int | None = None

    def __init__(
        self,
        records: Sequence[dict],
        *,
        transform=None,
        num_classes: int = 1,
        in_channels: int = 3,
    ) -> None:
        records = list(records)
        if not records:
            raise DataError(
                f"{type(self).__name__} got no image/mask records; check the data root and split."
            )
        for i, rec in enumerate(records):
            missing = {"id", "image", "mask"} - set(rec)
            if missing:
                raise KeyError(
                    f"record {i} lacks {sorted(missing)}; records need id, image, mask[, meta]."
                )
        self.records = records
        self.ids = [str(rec["id"]) for rec in records]
        self.transform = (
            transform if transform is not None else build_transform(image_size=None, train=False)
        )
        self.num_classes = num_classes
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.records)

    def load_mask(self, index: int) -> np.ndarray:
        """The binary mask ``uint8 [H, W]`` of item ``index`` (without its image)."""
        rec = self.records[index]
        return read_mask(rec["mask"], self.mask_threshold, lesion_value=self.mask_lesion_value)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Raw ``(image uint8 [H, W, 3], mask uint8 [H, W] in {0, 1}, meta)`` of item ``index``,
        size-checked."""
        rec = self.records[index]
        image = read_image(rec["image"])
        mask = self.load_mask(index)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image '{rec['image']}' is {image.shape[1]}x{image.shape[0]} (WxH) but its mask "
                f"'{rec['mask']}' is {mask.shape[1]}x{mask.shape[0]}; masks must match their "
                "image. Re-export the mask at the image size, or check that the two files belong "
                "together."
            )
        return image, mask, dict(rec.get("meta", {}))

    def exclude_unreadable(self) -> list[dict]:
        """Read every item once and drop those that fail (unreadable or corrupt image or mask, mask
        of the wrong size); the ``data.on_error: skip`` policy.

        Returns:
            One ``{"id", "image", "mask", "error"}`` per excluded item (the error names the file).
        """
        keep, skipped = [], []
        for index, rec in enumerate(self.records):
            try:
                self.load(index)
                keep.append(rec)
            except (OSError, ValueError) as err:
                skipped.append(
                    {
                        "id": str(rec["id"]),
                        "image": str(rec["image"]),
                        "mask": str(rec["mask"]),
                        "error": str(err),
                    }
                )
        self.records = keep
        self.ids = [str(rec["id"]) for rec in keep]
        return skipped

    def __getitem__(self, index: int) -> dict:
        image, mask, meta = self.load(index)
        image_t, mask_t = self.transform(image, mask)
        return {"image": image_t, "mask": mask_t, "id": self.ids[index], "meta": meta}


@DATASETS.register("paired_folder")
class PairedFolder(FileSegmentationDataset):
    """A generic ``images/`` + ``masks/`` tree.

    Layout: ``root/<split>/<image_dir>`` and ``root/<split>/<mask_dir>``. When ``root`` has no split
    folders at all but has ``root/<image_dir>`` directly, that flat folder is served for *every*
    split (point ``root`` at a test-only folder, say) and a warning says so for splits other than
    ``train``; a root with some split folders but not the requested one is an error.

    Matching: a mask belongs to an image when its stem equals the image stem plus ``mask_suffix``,
    compared case-insensitively (``ISIC_0000000.jpg`` <-> ``isic_0000000_Segmentation.PNG`` with
    ``mask_suffix="_segmentation"``). Files whose extension is not an image (``.csv``, ``.txt``,
    ...) and hidden files (``._*`` macOS resource forks) are ignored; ``.npy`` masks are
    accepted. Ids are image stems, sorted.

    Args:
        root: dataset root.
        split: ``"train"``, ``"val"``, ``"test"`` or any folder name.
        image_dir, mask_dir: sub-folder names.
        mask_suffix: text between the image stem and the mask extension.
        transform: see :class:`FileSegmentationDataset`.
    """

    def __init__(
        self,
        *,
        root: str,
        split: str = "train",
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_suffix: str = "",
        transform=None,
    ) -> None:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise FileNotFoundError(
                f"paired_folder root '{root_path}' does not exist; expected a folder with "
                f"'<split>/{image_dir}' and '<split>/{mask_dir}' "
                f"(or '{image_dir}' and '{mask_dir}')."
            )
        base = root_path / split
        if not base.is_dir():
            splits = sorted(p.name for p in root_path.iterdir() if (p / image_dir).is_dir())
            if splits or not (root_path / image_dir).is_dir():
                raise FileNotFoundError(
                    f"paired_folder split folder '{base}' does not exist; expected "
                    f"'{base / image_dir}' and '{base / mask_dir}'. Split folders found under "
                    f"'{root_path}': {splits or 'none'}."
                )
            base = root_path
            if split != "train":
                warnings.warn(
                    f"paired_folder: '{root_path}' has no split folders; serving all of "
                    f"'{root_path / image_dir}' as split '{split}'.",
                    stacklevel=2,
                )
        image_folder, mask_folder = base / image_dir, base / mask_dir
        for folder, what in ((image_folder, "images"), (mask_folder, "masks")):
            if not folder.is_dir():
                raise FileNotFoundError(f"paired_folder {what} folder '{folder}' does not exist.")
        records = _match_pairs(
            list_files(image_folder, IMAGE_SUFFIXES),
            list_files(mask_folder, MASK_SUFFIXES),
            mask_suffix,
        )
        if not records:
            raise DataError(
                f"paired_folder found no images in '{image_folder}' (looked for "
                f"{', '.join(IMAGE_SUFFIXES)}); put the images there or fix data.root."
            )
        self.root, self.split = str(root_path), split
        super().__init__(records, transform=transform)


def _match_pairs(images: list[Path], masks: list[Path], mask_suffix: str) -> list[dict]:
    """Pair images and masks by stem (case-insensitive); raise naming the first unmatched file."""
    by_key: dict[str, Path] = {}
    for mask in masks:
        key = mask.stem.lower()
        if key in by_key:
            raise DataError(
                f"two masks share the id '{key}': '{by_key[key]}' and '{mask}'; remove one."
            )
        by_key[key] = mask
    records, seen = [], {}
    for image in images:
        key = image.stem.lower()
        if key in seen:
            raise DataError(
                f"two images share the id '{key}': '{seen[key]}' and '{image}'; remove one."
            )
        seen[key] = image
        mask = by_key.pop(key + mask_suffix.lower(), None)
        if mask is None:
            raise FileNotFoundError(
                f"image '{image}' has no mask '{image.stem}{mask_suffix}.<png|jpg|bmp|npy...>' in "
                f"'{masks[0].parent if masks else 'the mask folder'}'; add it or remove the image "
                "(check mask_suffix)."
            )
        records.append({"id": image.stem, "image": str(image), "mask": str(mask), "meta": {}})
    if by_key:
        first = sorted(by_key.values())[0]
        stem = first.stem
        if mask_suffix and stem.lower().endswith(mask_suffix.lower()):
            stem = stem[: len(stem) - len(mask_suffix)]
        raise FileNotFoundError(
            f"mask '{first}' has no image (expected '{stem}.<jpg|png|...>' in "
            f"'{images[0].parent if images else 'the image folder'}'); {len(by_key)} mask(s) are "
            "unmatched. Remove them or check mask_suffix."
        )
    return records


def collate(batch: Sequence[dict]) -> dict:
    """Stack ``image`` / ``mask`` into ``[B, C, H, W]`` / ``[B, H, W]``; keep ``id``, ``meta``
    lists."""
    if not batch:
        raise ValueError("collate got an empty batch.")
    shapes = {tuple(item["image"].shape) for item in batch}
    if len(shapes) > 1:
        sizes = ", ".join(f"{item['id']}: {tuple(item['image'].shape)}" for item in batch[:4])
        raise DataError(
            f"images in one batch have different sizes ({sizes}, ...); set an image_size in the "
            "transform so every image is resized to the same square."
        )
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "mask": torch.stack([item["mask"] for item in batch]),
        "id": [item["id"] for item in batch],
        "meta": [item["meta"] for item in batch],
    }
