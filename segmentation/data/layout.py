"""Reading official dataset trees: folder lookup, file listing, id matching, count checks.

Shared by the ISIC/HAM10000 (:mod:`.isic`), PH2 (:mod:`.ph2`) and DDI (:mod:`.ddi`) loaders and by
``tools/prepare_data.py``, so every loader tolerates and rejects the same things
(``docs/datasets.md``):

* one doubled folder level (``X/X/...``, left by some unzippers) is looked through;
* only files with an image (or ``.npy`` for masks) extension are considered; hidden files
  (``._ISIC_...`` macOS resource forks, ``.DS_Store``) are skipped;
* image and mask names are matched to an id by a regular expression, case-insensitively, so the
  capital-S ``_Segmentation`` of ISIC 2016 and the lower-case ``_segmentation`` of 2017/2018 are
  both accepted; image-extension files that do not match (``*_superpixels.png``) are *ignored* and
  listed in :attr:`Matched.ignored`, so a summary can show what was skipped;
* an image without a mask, a mask without an image, or two files for one id raise an error naming
  the first offending file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .files import MASK_SUFFIXES, FileSegmentationDataset, list_files

__all__ = [
    "Matched",
    "OfficialDataset",
    "resolve_dir",
    "list_files",
    "match_by_id",
    "check_count",
]


def _image_files(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in MASK_SUFFIXES for p in folder.iterdir())


def resolve_dir(root: str | Path, name: str, *, what: str = "folder") -> Path:
    """``root/name``, or ``root/name/name`` when an unzipper doubled the folder.

    Raises:
        FileNotFoundError: neither exists; the message lists the folders found under ``root``.
    """
    root = Path(root)
    path = root / name
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"{what} '{path}' does not exist. Point data.root at the folder that holds the "
            f"official '{name}' folder as it unpacks from the download; folders found under "
            f"'{root}': {found or 'none (the root does not exist or is empty)'}."
        )
    inner = path / name
    if inner.is_dir() and not _image_files(path):
        return inner
    return path


@dataclass
class Matched:
    """Result of :func:`match_by_id`: records sorted by id and the image files that were skipped."""

    records: list[dict]
    ignored: list[Path] = field(default_factory=list)


def _index(files: list[Path], pattern: re.Pattern, what: str) -> tuple[dict[str, Path], list[Path]]:
    by_id: dict[str, Path] = {}
    ignored = []
    for path in files:
        match = pattern.fullmatch(path.stem)
        if match is None:
            ignored.append(path)
            continue
        key = match.group("id").lower()
        if key in by_id:
            raise ValueError(
                f"two {what} files have the id '{match.group('id')}': '{by_id[key]}' and "
                f"'{path}'; keep one of them."
            )
        by_id[key] = path
    return by_id, ignored


def match_by_id(
    images: list[Path],
    masks: list[Path],
    *,
    image_pattern: str,
    mask_pattern: str,
    mask_hint: str,
) -> Matched:
    """Pair image and mask files by the id captured by the patterns' ``(?P<id>...)`` group.

    Args:
        images: candidate image files (e.g. from :func:`list_files`).
        masks: candidate mask files.
        image_pattern: regex the image *stem* must fully match (case-insensitive), e.g.
            ``(?P<id>ISIC_\\d{7})``; other image files are ignored.
        mask_pattern: the same for mask stems, e.g. ``(?P<id>ISIC_\\d{7})_segmentation``.
        mask_hint: how an expected mask is named, for error messages (``{id}`` is filled in).

    Returns:
        :class:`Matched` with records ``{"id", "image", "mask", "meta": {}}`` sorted by id (the id
        as spelled in the image file name).

    Raises:
        FileNotFoundError: an image has no mask, or a mask has no image (the first one is named).
        ValueError: two image (or two mask) files share an id.
    """
    image_re = re.compile(image_pattern, re.IGNORECASE)
    mask_re = re.compile(mask_pattern, re.IGNORECASE)
    by_image, ignored = _index(images, image_re, "image")
    by_mask, ignored_masks = _index(masks, mask_re, "mask")
    mask_dir = masks[0].parent if masks else "the mask folder"
    for key in sorted(by_image):
        if key not in by_mask:
            image = by_image[key]
            expected = mask_hint.format(id=image_re.fullmatch(image.stem).group("id"))
            raise FileNotFoundError(
                f"image '{image}' has no mask: expected '{expected}' in '{mask_dir}' "
                f"({len(set(by_image) - set(by_mask))} image(s) lack a mask). Restore the mask, "
                "or remove the image from the copy (and set allow_partial if the count drops)."
            )
    extra = sorted(set(by_mask) - set(by_image))
    if extra:
        mask = by_mask[extra[0]]
        image_dir = images[0].parent if images else "the image folder"
        raise FileNotFoundError(
            f"mask '{mask}' has no image in '{image_dir}' ({len(extra)} mask(s) without an "
            "image). Restore the image or remove the mask."
        )
    records = [
        {
            "id": image_re.fullmatch(by_image[key].stem).group("id"),
            "image": str(by_image[key]),
            "mask": str(by_mask[key]),
            "meta": {},
        }
        for key in sorted(by_image)
    ]
    return Matched(records, ignored + ignored_masks)


def check_count(
    found: int, expected: int | None, *, dataset: str, what: str, allow_partial: bool
) -> None:
    """Raise unless ``found == expected`` (skipped when ``expected`` is None or ``allow_partial``).

    Raises:
        ValueError: naming the dataset, the split and both counts, with the ``allow_partial`` hint.
    """
    if expected is None or allow_partial or found == expected:
        return
    raise ValueError(
        f"{dataset}: found {found} image/mask pairs for {what}, but the official release has "
        f"{expected}. Complete the copy (tools/prepare_data.py --dataset {dataset} --root DIR "
        "lists what is there), or pass allow_partial=True (--set data.allow_partial=true) to use "
        "a partial copy on purpose."
    )


SPLITS = ("train", "val", "test")


class OfficialDataset(FileSegmentationDataset):
    """Base of the official-layout loaders: argument checks and split selection.

    Subclasses set ``dataset_name`` and ``split_names`` (the first is the default) and implement
    :meth:`scheme_records` (records of one split under ``self.split_name``, count-checked) and
    :meth:`all_records` (every pair on disk, for ``split_file``); :meth:`groups` may return the
    K-fold grouping (HAM10000: ``lesion_id``).

    Split selection, in order: ``split_file`` (a JSON of id lists, see
    :func:`~segmentation.data.splits.read_split_file`) picks from every pair on disk; ``num_folds
    > 0`` re-partitions the union of the scheme's train and val into a seeded K-fold and serves fold
    ``fold`` as val (test unchanged); otherwise the scheme's split.
    """

    dataset_name = "official"
    split_names: tuple[str, ...] = ("official",)
    in_channels = 3
    num_classes = 1

    def __init__(
        self,
        *,
        root: str | None = None,
        split: str = "train",
        transform=None,
        allow_partial: bool = False,
        split_name: str | None = None,
        seed: int = 0,
        num_folds: int = 0,
        fold: int = 0,
        split_file: str | None = None,
    ) -> None:
        # caches filled by the subclasses' all_records / official (read during split selection)
        self._records: list[dict] | None = None
        self._scanned: dict[str, list[dict]] = {}
        if split not in SPLITS:
            raise KeyError(f"{self.dataset_name}: unknown split '{split}'; accepted: {SPLITS}.")
        split_name = self.split_names[0] if split_name is None else split_name
        if split_name not in self.split_names:
            raise KeyError(
                f"{self.dataset_name}: unknown split_name '{split_name}'; accepted: "
                f"{', '.join(self.split_names)}."
            )
        if root is None or not Path(root).expanduser().is_dir():
            raise FileNotFoundError(
                f"{self.dataset_name}: data root '{root}' is not a folder. Set it, e.g. "
                f"--set data.root=/data/{self.dataset_name}, to the folder holding the unpacked "
                "official download."
            )
        self.root = Path(root).expanduser()
        self.split, self.split_name, self.seed = split, split_name, int(seed)
        self.allow_partial, self.num_folds, self.fold = bool(allow_partial), num_folds, fold
        self.ignored: list[Path] = []
        if split_file is not None:
            from .splits import read_split_file

            pool = {r["id"]: r for r in self.all_records()}
            wanted = read_split_file(split_file).get(split)
            if wanted is None:
                raise KeyError(f"split file '{split_file}' has no '{split}' id list.")
            absent = [i for i in wanted if i not in pool]
            if absent and not self.allow_partial:
                raise FileNotFoundError(
                    f"split file '{split_file}' lists {len(absent)} '{split}' id(s) that are not "
                    f"on disk, first '{absent[0]}'; complete the copy or pass allow_partial=True."
                )
            records = [pool[i] for i in wanted if i in pool]
        elif num_folds and split != "test":
            from .splits import kfold_split

            pool = {r["id"]: r for s in ("train", "val") for r in self.scheme_records(s, True)}
            ids = kfold_split(
                list(pool), num_folds=num_folds, fold=fold, seed=self.seed, groups=self.groups()
            )[split]
            records = [pool[i] for i in ids]
        else:
            records = self.scheme_records(split, False)
        if not records:
            raise DataError(
                f"{self.dataset_name}: split '{split}' ({split_name}) is empty under '{root}'; "
                "check data.root and the split settings."
            )
        super().__init__(records, transform=transform)

    # attributes a subclass's __init__ sets before split selection (for :meth:`scan`)
    scan_defaults: dict = {}

    @classmethod
    def scan(cls, root: str, *, allow_partial: bool = True, **kwargs):
        """An instance that reads the tree without choosing a split (for ``tools/prepare_data.py``
        and ``tools/make_splits.py``): call :meth:`all_records` (or ``official(split)`` on ISIC).
        Counts are not checked unless ``allow_partial=False``."""
        self = cls.__new__(cls)
        self.root, self.split, self.split_name, self.seed = Path(root), None, cls.split_names[0], 0
        self.allow_partial, self.num_folds, self.fold, self.ignored = allow_partial, 0, 0, []
        self._scanned, self._records = {}, None
        for key, value in {**cls.scan_defaults, **kwargs}.items():
            setattr(self, key, value)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{cls.dataset_name}: data root '{root}' is not a folder.")
        return self

    def scheme_records(self, split: str, for_kfold: bool) -> list[dict]:
        """Records of ``split`` under ``self.split_name``; ``for_kfold`` allows a split the scheme
        lacks (ISIC 2016 has no val) to be empty."""
        raise NotImplementedError

    def all_records(self) -> list[dict]:
        """Every image/mask pair on disk."""
        raise NotImplementedError

    def groups(self) -> dict[str, str] | None:
        """K-fold grouping (id -> group) or None."""
        return None
