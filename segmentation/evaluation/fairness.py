"""Skin tone per evaluated image and the fairness (group) reports of ``tools/evaluate.py``.

Skin-tone columns are computed by the *evaluation tool* from the raw image and its ground-truth mask
(``dataset.load(i)``), after the predictions are made: the mask only tells which pixels are healthy
skin for the report and never reaches the network. Columns added to each per-image row:

* ``ita``: median Individual Typology Angle (degrees) of healthy-skin pixels in float CIELAB
  (lesion, near-black aperture and thin dark structures such as hair and ruler ticks excluded; see
  :func:`segmentation.data.color.healthy_skin_mask`); ``nan`` when too little skin is visible.
* ``ita_chardon6``, ``ita_kinyanjui8``: its bin under the two presets (``unknown`` for ``nan``).
* ``lesion_delta_e``: CIE76 Delta E between median lesion and median healthy-skin colour.
* ``contrast_group``: ``low`` / ``medium`` / ``high`` by :data:`CONTRAST_BINS` (Delta E < 10, 10-20,
  >= 20 by default: 10 matches the synthetic generator's ``low_contrast`` tag; a convention, not a
  standard), ``unknown`` for ``nan``.

Images larger than ``max_side`` (512) are downscaled (area interpolation; the mask nearest) before
the measurement: a median colour does not need full-resolution ISIC images, and every kernel of the
skin mask scales with the image size.

Images whose group is ``unknown`` are left out of the group tables and counted in the report's
``n_missing`` ("rows without a group"). Groupings (``--groups``): ``ita`` (measured chardon6 and
kinyanjui8 bins, plus the generator's true ``ita_group`` on synthetic data), ``fitzpatrick`` (DDI
metadata), ``contrast`` and ``tags`` (the synthetic difficulty tags; an image counts in each of its
tags, untagged images in ``none``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

from segmentation.data.color import ITA_BINS, ita, ita_group, lesion_contrast, rgb_to_lab
from segmentation.evaluation.groups import group_report

__all__ = [
    "CONTRAST_BINS",
    "GROUP_TITLES",
    "GROUPINGS",
    "contrast_group",
    "skin_tone_columns",
    "add_skin_tone",
    "check_groupings",
    "fairness_reports",
]

CONTRAST_BINS: tuple[float, float] = (10.0, 20.0)
GROUPINGS = ("ita", "fitzpatrick", "contrast", "tags")
# headings of the markdown tables
GROUP_TITLES = {
    "ita_group": "true ITA group (synthetic generator, chardon6 bins)",
    "ita_chardon6": "measured ITA, chardon6 bins",
    "ita_kinyanjui8": "measured ITA, kinyanjui8 bins",
    "fitzpatrick": "Fitzpatrick group",
    "contrast_group": "lesion-skin contrast (Delta E)",
    "tags": "difficulty tag (an image counts in each of its tags)",
}
SKIN_COLUMNS = ("ita", "ita_chardon6", "ita_kinyanjui8", "lesion_delta_e", "contrast_group")


def contrast_group(delta_e: float, bins: Sequence[float] = CONTRAST_BINS) -> str:
    """``low`` (< bins[0]), ``medium`` (< bins[1]), ``high``; ``unknown`` for ``nan``."""
    if delta_e is None or math.isnan(delta_e):
        return "unknown"
    return "low" if delta_e < bins[0] else ("medium" if delta_e < bins[1] else "high")


def skin_tone_columns(
    image: np.ndarray,
    lesion: np.ndarray,
    *,
    max_side: int = 512,
    contrast_bins: Sequence[float] = CONTRAST_BINS,
) -> dict:
    """The skin-tone columns of one image.

    Args:
        image: ``uint8 [H, W, 3]`` RGB as read from disk.
        lesion: ``[H, W]`` ground truth, nonzero = lesion (used to exclude lesion pixels).
        max_side: downscale larger images to this longest side first.
        contrast_bins: Delta E edges of the contrast groups.
    """
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    lesion = (np.asarray(lesion) > 0).astype(np.uint8)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        lesion = cv2.resize(lesion, size, interpolation=cv2.INTER_NEAREST)
    lab = rgb_to_lab(image)
    value = ita(image, lesion, lab=lab)
    delta_e = lesion_contrast(image, lesion, lab=lab)
    return {
        "ita": value,
        "ita_chardon6": ita_group(value, "chardon6"),
        "ita_kinyanjui8": ita_group(value, "kinyanjui8"),
        "lesion_delta_e": delta_e,
        "contrast_group": contrast_group(delta_e, contrast_bins),
    }


def add_skin_tone(
    rows: list[dict], dataset, *, contrast_bins: Sequence[float] = CONTRAST_BINS
) -> list[dict]:
    """Rows with the skin-tone columns, read from ``dataset.load(i)`` (raw image and mask).

    A dataset without ``load`` (only transformed items) gets no columns, with a warning. The lesion
    is label 1 (binary masks, or the DDI label maps with ``labels="all"``).
    """
    if not hasattr(dataset, "load"):
        warnings.warn(
            f"{type(dataset).__name__} has no load() returning raw (image, mask, meta); "
            "per_image.csv gets no skin-tone columns.",
            stacklevel=2,
        )
        return rows
    index = {str(i): k for k, i in enumerate(dataset.ids)}
    out = []
    for row in rows:
        image, mask, _ = dataset.load(index[str(row["id"])])
        columns = skin_tone_columns(image, mask == 1, contrast_bins=contrast_bins)
        clash = set(columns) & set(row)
        if clash:
            raise ValueError(
                f"per-image row of '{row['id']}' already has {sorted(clash)}; the dataset's meta "
                "must not use the skin-tone column names."
            )
        out.append({**row, **columns})
    return out


def check_groupings(groupings: Sequence[str], meta: dict) -> None:
    """Fail before evaluating when a requested grouping cannot exist (``meta``: one sample's)."""
    for name in groupings:
        if name not in GROUPINGS:
            raise ValueError(f"unknown grouping '{name}'; accepted: {', '.join(GROUPINGS)}.")
    if "fitzpatrick" in groupings and "fitzpatrick" not in meta:
        raise ValueError(
            "--groups fitzpatrick needs a 'fitzpatrick' column in the dataset's metadata (DDI has "
            f"it); this dataset's meta has {sorted(meta) or 'no keys'}. Use --groups ita instead."
        )
    if "tags" in groupings and "tags" not in meta:
        raise ValueError(
            "--groups tags needs the synthetic generator's 'tags' metadata; this dataset has none."
        )


def _tables(grouping: str, rows: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    """(column, rows, group order) for each table of a grouping."""
    if grouping == "ita":
        out = []
        if rows and "ita_group" in rows[0]:  # synthetic: the generator's true group
            out.append(("ita_group", rows, [n for _, n in ITA_BINS["chardon6"]]))
        for preset in ITA_BINS:
            out.append((f"ita_{preset}", rows, [n for _, n in ITA_BINS[preset]]))
        return out
    if grouping == "fitzpatrick":
        return [("fitzpatrick", rows, ["I-II", "III-IV", "V-VI"])]
    if grouping == "contrast":
        return [("contrast_group", rows, ["low", "medium", "high"])]
    from segmentation.data.synthetic import TAGS

    tagged = [
        {**r, "tags": str(r.get("tags") or "").split(";") if r.get("tags") else ["none"]}
        for r in rows
    ]
    return [("tags", tagged, [*TAGS, "none"])]


def fairness_reports(
    rows: list[dict],
    groupings: Sequence[str],
    *,
    metric: str = "dice",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """``{column: group_report(...)}`` for every table of every requested grouping."""
    reports = {}
    for grouping in dict.fromkeys(groupings):
        for column, table_rows, order in _tables(grouping, rows):
            # "unknown" (too little visible skin or lesion) is not a group: it would become the
            # worst group by accident; such rows are counted as n_missing instead
            table_rows = [
                {**r, column: None} if r.get(column) == "unknown" else r for r in table_rows
            ]
            present = {
                str(r.get(column)) for r in table_rows if not isinstance(r.get(column), list)
            }
            present |= {
                str(g) for r in table_rows if isinstance(r.get(column), list) for g in r[column]
            }
            extra = sorted(present - set(order) - {"None", "", "nan"})
            reports[column] = group_report(
                table_rows, column, metric, n_boot=n_boot, seed=seed, order=[*order, *extra]
            )
    return reports
