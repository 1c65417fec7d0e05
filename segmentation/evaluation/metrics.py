"""Binary lesion-segmentation metrics of the dermseg protocol (``docs/protocol.md``).

Everything starts from per-image integer confusion counts (TP, FP, FN, TN), so per-image ("macro")
means, dataset-global ("micro") scores and distributed gathering are exact. The accumulator follows
MONAI's ``update -> compute -> reset`` pattern (``monai.metrics.CumulativeIterationMetric``).

Definitions (also returned by :meth:`SegmentationMetrics.compute` under ``"definitions"``):

* Binarisation: one channel -> ``sigmoid(logit) > 0.5``, implemented as ``logit > 0`` (equal in
  exact arithmetic; in float32 ``sigmoid`` rounds to exactly 0.5 for ``0 < logit < ~3e-8``, so
  ``logit > 0`` is the exact form of the rule); ``K > 1`` channels -> ``argmax``, and the lesion is
  class ``foreground`` (default 1).
* Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), thresholded Jaccard (ISIC 2018) = IoU if
  IoU >= 0.65 else 0, compared in float64 so that e.g. 13/20 is kept. Sensitivity TP / (TP + FN),
  specificity TN / (TN + FP), accuracy (TP + TN) / N.
* Empty policy (``one`` | ``nan`` | ``zero``): the value of a ratio whose denominator is zero. For
  Dice and IoU that happens exactly when ground truth and prediction are both empty (ISIC
  convention: 1); for sensitivity when the ground truth is empty; for specificity when the ground
  truth covers the whole image. This is smp's ``zero_division`` rule. NaN values are left out of
  means.
* Boundary metrics in pixels on the 4-connected boundary (mask minus its erosion by a cross, as
  MONAI and medpy do), exact Euclidean distances between boundary pixels (KD-tree, as MONAI does on
  CPU). HD95 ``monai``: max of the two directed 95th percentiles; ``medpy``: 95th percentile of the
  pooled distances of both directions. ASSD ``monai``: mean of the pooled distances; ``medpy``:
  mean of the two directed means. Percentiles interpolate linearly
  (``numpy.percentile``/``torch.quantile``). NaN when either mask is empty (excluded, and counted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segmentation.evaluation.boundary import (
    ASSD_DEFINITIONS,
    HD95_DEFINITIONS,
    _assd_from,
    _hd_from,
    as_binary_mask,
    assd,
    hausdorff_distance,
    hd95,
    surface_distances,
)
from segmentation.registry import METRICS

EMPTY_POLICIES = {"one": 1.0, "nan": math.nan, "zero": 0.0}
THRESHOLDED_JACCARD_CUTOFF = 0.65
PER_IMAGE_METRICS = (
    "dice", "iou", "thresholded_jaccard", "sensitivity", "specificity", "accuracy", "hd95", "assd",
)  # fmt: skip


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}.")


def binarize(logits: torch.Tensor, foreground: int = 1) -> torch.Tensor:
    """Turn raw network logits into a binary lesion mask.

    Args:
        logits: ``[B, K, H, W]`` raw logits (never probabilities).
        foreground: lesion class index when ``K > 1``.

    Returns:
        ``long [B, H, W]`` in {0, 1}: ``logit > 0`` (= ``sigmoid > 0.5``) for ``K == 1``, else
        ``argmax == foreground``.
    """
    if logits.ndim != 4:
        raise ValueError(
            f"binarize expects logits [B, K, H, W], got shape {tuple(logits.shape)}; "
            "add the channel dimension with logits.unsqueeze(1) for a single-channel map."
        )
    num_classes = logits.shape[1]
    if num_classes == 1:
        return (logits[:, 0] > 0).long()
    if not 0 <= foreground < num_classes:
        raise ValueError(f"foreground class must be in [0, {num_classes - 1}], got {foreground}.")
    return (logits.argmax(dim=1) == foreground).long()


def confusion_counts(pred: Any, target: Any) -> np.ndarray:
    """Per-image TP, FP, FN, TN in integer arithmetic.

    Args:
        pred: binary prediction ``long/bool [B, H, W]`` (tensor or array).
        target: binary ground truth of the same shape.

    Returns:
        ``int64 [B, 4]`` numpy array with columns TP, FP, FN, TN.
    """
    p, t = as_binary_mask(pred, "pred"), as_binary_mask(target, "target")
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(
            f"pred and target must both be [B, H, W] with the same shape, got {tuple(p.shape)} and "
            f"{tuple(t.shape)}."
        )
    t = t.to(p.device)
    p, t = p.reshape(p.shape[0], -1), t.reshape(t.shape[0], -1)  # (B, H*W)
    tp = (p & t).sum(1, dtype=torch.int64)
    fp = (p & ~t).sum(1, dtype=torch.int64)
    fn = (~p & t).sum(1, dtype=torch.int64)
    tn = p.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1).cpu().numpy()


def scores_from_counts(counts: Any, empty: str = "one") -> dict[str, np.ndarray]:
    """Dice, IoU, thresholded Jaccard, sensitivity, specificity and accuracy from counts.

    Args:
        counts: ``int [N, 4]`` (TP, FP, FN, TN) or a single row ``[4]``.
        empty: value of a 0/0 ratio: ``"one"`` (default, ISIC), ``"nan"`` (excluded from means),
            ``"zero"``.

    Returns:
        Dict of float64 arrays ``[N]``.
    """
    _check_choice(empty, EMPTY_POLICIES, "empty policy")
    c = np.asarray(counts)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != 4 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(
            f"counts must be integers of shape [N, 4] (TP, FP, FN, TN), got {c.dtype} {c.shape}; "
            "compute them with confusion_counts()."
        )
    tp, fp, fn, tn = c.astype(np.int64).T
    fill = EMPTY_POLICIES[empty]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.full(num.shape, fill, dtype=np.float64)
        ok = den > 0
        out[ok] = num[ok].astype(np.float64) / den[ok].astype(np.float64)
        return out

    iou = ratio(tp, tp + fp + fn)
    keep = np.isnan(iou) | (iou >= THRESHOLDED_JACCARD_CUTOFF)
    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": iou,
        "thresholded_jaccard": np.where(keep, iou, 0.0),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
    }


# -- accumulator ---------------------------------------------------------------------------------


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars from a collated ``meta`` dict -> Python values for CSV/JSON."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.ndarray | np.generic) and value.size == 1:
        return value.item()
    return value


class SegmentationMetrics:
    """Accumulates per-image counts and boundary distances: ``update -> compute -> reset``.

    The MONAI metric pattern. Stores integer counts and per-image rows, never running averages, so
    :meth:`state`/:meth:`merge` gather a distributed evaluation exactly (counts concatenated, then
    pooled or averaged once).

    Args:
        empty: value of 0/0 ratios (``"one"``, ``"nan"``, ``"zero"``), see the module docstring.
        boundary: compute HD95 and ASSD (CPU cost: KD-tree queries on boundary pixels only).
        hd95_definition: ``"monai"`` or ``"medpy"``.
        assd_definition: ``"monai"`` or ``"medpy"``.
        foreground: lesion class for ``K > 1`` logits and multi-class masks.

    Example:
        >>> metrics = SegmentationMetrics()
        >>> for batch in loader:
        ...     metrics.update(model(batch["image"]), batch["mask"], batch["id"], batch["meta"])
        >>> result, rows = metrics.compute(), metrics.rows()
    """

    def __init__(
        self,
        *,
        empty: str = "one",
        boundary: bool = True,
        hd95_definition: str = "monai",
        assd_definition: str = "monai",
        foreground: int = 1,
    ) -> None:
        _check_choice(empty, EMPTY_POLICIES, "empty policy")
        _check_choice(hd95_definition, HD95_DEFINITIONS, "hd95_definition")
        _check_choice(assd_definition, ASSD_DEFINITIONS, "assd_definition")
        if not isinstance(foreground, int) or foreground < 0:
            raise ValueError(f"foreground must be a non-negative class index, got {foreground!r}.")
        self.settings = {
            "empty": empty,
            "boundary": bool(boundary),
            "hd95_definition": hd95_definition,
            "assd_definition": assd_definition,
            "foreground": foreground,
        }
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._counts: list[np.ndarray] = []  # int64 [b, 4] per update
        self._boundary: list[np.ndarray] = []  # float64 [b, 2]: hd95, assd
        self._ids: list[Any] = []
        self._meta: list[dict] = []

    def update(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        ids: Sequence[Any] | None = None,
        meta: Sequence[dict] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            logits: ``[B, K, H, W]`` raw logits.
            mask: ``long [B, H, W]`` ground truth ({0, 1}, or class labels < K when K > 1).
            ids: ``B`` image ids (``batch["id"]``); defaults to the running position.
            meta: ``B`` metadata dicts (``batch["meta"]``), copied into :meth:`rows`.
        """
        if logits.ndim != 4 or tuple(mask.shape) != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits [B, K, H, W] and mask [B, H, W] with matching B, H, W, got "
                f"{tuple(logits.shape)} and {tuple(mask.shape)}; resize logits to the mask size "
                "first."
            )
        if not torch.isfinite(logits).all():
            raise ValueError(
                "logits contain NaN or inf; the network diverged or the input is broken."
            )
        batch, num_classes = logits.shape[0], logits.shape[1]
        fg = self.settings["foreground"]
        if num_classes > 1:
            if mask.is_floating_point() or int(mask.min()) < 0 or int(mask.max()) >= num_classes:
                raise ValueError(
                    f"mask must hold integer labels in [0, {num_classes - 1}] for "
                    f"{num_classes}-channel logits, got {mask.dtype} values in "
                    f"[{mask.min().item()}, {mask.max().item()}]."
                )
            mask = mask == fg
        pred = binarize(logits, fg)
        counts = confusion_counts(pred, mask)
        bnd = np.full((batch, 2), math.nan)
        if self.settings["boundary"]:
            pred_np, mask_np = pred.bool().cpu().numpy(), as_binary_mask(mask, "mask").cpu().numpy()
            for i in range(batch):
                d = surface_distances(pred_np[i], mask_np[i])
                bnd[i] = (
                    _hd_from(d, 95, self.settings["hd95_definition"]),
                    _assd_from(d, self.settings["assd_definition"]),
                )
        ids = [None] * batch if ids is None else list(ids)
        meta = [{}] * batch if meta is None else list(meta)
        if len(ids) != batch or len(meta) != batch:
            raise ValueError(
                f"got {len(ids)} ids and {len(meta)} meta dicts for a batch of {batch}."
            )
        self._counts.append(counts)
        self._boundary.append(bnd)
        self._ids.extend(_plain(i) for i in ids)
        self._meta.extend({k: _plain(v) for k, v in dict(m).items()} for m in meta)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._counts:
            raise ValueError("no images accumulated; call update() before compute()/rows().")
        return np.concatenate(self._counts), np.concatenate(self._boundary)

    def definitions(self) -> dict[str, str]:
        """Named definitions of every reported number (written next to the numbers)."""
        on = self.settings["boundary"]
        return {
            "binarize": "1 channel: sigmoid(logit) > 0.5 (= logit > 0); K > 1: argmax == "
            f"{self.settings['foreground']}",
            "per_image": "macro: mean over images of per-image values, NaN excluded",
            "global": "micro: counts pooled over all pixels",
            "empty": self.settings["empty"],
            "thresholded_jaccard": "IoU if IoU >= 0.65 else 0 (float64), per image",
            "hd95": HD95_DEFINITIONS[self.settings["hd95_definition"]] if on else "not computed",
            "assd": ASSD_DEFINITIONS[self.settings["assd_definition"]] if on else "not computed",
            "boundary_excluded": "images with an empty prediction or ground truth (no distance)",
        }

    def compute(self) -> dict[str, Any]:
        """Per-image means, global (micro) Dice/IoU, image counts and definitions."""
        counts, bnd = self._arrays()
        ids = [i for i in self._ids if i is not None]
        if len(set(ids)) != len(ids):
            dup = sorted({str(i) for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(
                f"duplicate image ids {dup}: an image was counted twice (DistributedSampler "
                "pads the last batch with repeats); use merge(..., drop_duplicates=True) or an "
                "unpadded sampler."
            )
        empty = self.settings["empty"]
        per_image = {k: _nanmean(v) for k, v in scores_from_counts(counts, empty).items()}
        per_image["hd95"], per_image["assd"] = _nanmean(bnd[:, 0]), _nanmean(bnd[:, 1])
        pooled = scores_from_counts(counts.sum(0), empty)
        return {
            "per_image": per_image,
            "global": {"dice": float(pooled["dice"][0]), "iou": float(pooled["iou"][0])},
            "n_images": len(counts),
            # None when boundary metrics were not computed (nothing was excluded)
            "boundary_excluded": (
                int(np.isnan(bnd[:, 0]).sum()) if self.settings["boundary"] else None
            ),
            "definitions": self.definitions(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One dict per image: id, TP/FP/FN/TN, every per-image metric, then the meta columns."""
        counts, bnd = self._arrays()
        scores = scores_from_counts(counts, self.settings["empty"])
        out = []
        for i, (image_id, meta) in enumerate(zip(self._ids, self._meta, strict=True)):
            row: dict[str, Any] = {"id": i if image_id is None else image_id}
            row.update(zip(("tp", "fp", "fn", "tn"), (int(c) for c in counts[i]), strict=True))
            row.update({k: float(v[i]) for k, v in scores.items()})
            row["hd95"], row["assd"] = float(bnd[i, 0]), float(bnd[i, 1])
            clash = set(meta) & set(row)
            if clash:
                raise ValueError(
                    f"meta keys {sorted(clash)} clash with metric columns; rename them."
                )
            out.append({**row, **meta})
        return out

    def state(self) -> dict[str, Any]:
        """Picklable raw state (counts, distances, ids, meta, settings) for all_gather_object."""
        counts, bnd = (
            self._arrays() if self._counts else (np.zeros((0, 4), np.int64), np.zeros((0, 2)))
        )
        return {
            "settings": dict(self.settings),
            "counts": counts,
            "boundary": bnd,
            "ids": list(self._ids),
            "meta": list(self._meta),
        }

    def merge(self, *others: SegmentationMetrics | dict, drop_duplicates: bool = False):
        """Append other accumulators (or their :meth:`state`); returns ``self``.

        Args:
            others: accumulators or states gathered from other processes, with the same settings.
            drop_duplicates: keep only the first image of each repeated (non-None) id, for
                samplers that pad.
        """
        for other in others:
            st = other.state() if isinstance(other, SegmentationMetrics) else other
            if st["settings"] != self.settings:
                raise ValueError(
                    f"cannot merge metrics with settings {st['settings']} into {self.settings}."
                )
            if len(st["counts"]):
                self._counts.append(np.asarray(st["counts"], dtype=np.int64))
                self._boundary.append(np.asarray(st["boundary"], dtype=np.float64))
                self._ids.extend(st["ids"])
                self._meta.extend(st["meta"])
        if drop_duplicates and self._counts:
            counts, bnd = self._arrays()
            seen: set = set()
            keep = []
            for i, image_id in enumerate(self._ids):
                if image_id is None or image_id not in seen:
                    keep.append(i)
                    seen.add(image_id)
            self._counts, self._boundary = [counts[keep]], [bnd[keep]]
            self._ids = [self._ids[i] for i in keep]
            self._meta = [self._meta[i] for i in keep]
        return self


# -- registry: names a config may use to select a checkpoint -----------------------------------


@dataclass(frozen=True)
class MetricSelector:
    """Reads one scalar from a :meth:`SegmentationMetrics.compute` result.

    Attributes:
        section: ``"per_image"`` or ``"global"``.
        key: metric name inside the section.
        higher_is_better: direction for checkpoint selection.
    """

    section: str
    key: str
    higher_is_better: bool = True

    def __call__(self, result: dict) -> float:
        return float(result[self.section][self.key])


for _name in PER_IMAGE_METRICS:
    METRICS.register(_name, MetricSelector("per_image", _name, _name not in ("hd95", "assd")))
METRICS.register("global_dice", MetricSelector("global", "dice"))
METRICS.register("global_iou", MetricSelector("global", "iou"))


def _selector(name: str) -> MetricSelector:
    try:
        return METRICS.get(name)[0]
    except KeyError as err:  # the registry's message has the did-you-mean and the accepted names
        raise ValueError(f"{err.args[0]} Use one of them as eval.metric.") from None


def metric_value(result: dict, name: str) -> float:
    """The scalar ``name`` (``dice``, ``thresholded_jaccard``, ``global_dice``...) of a result."""
    return _selector(name)(result)


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better (False for ``hd95`` and ``assd``)."""
    return _selector(name).higher_is_better


__all__ = [
    "ASSD_DEFINITIONS",
    "EMPTY_POLICIES",
    "HD95_DEFINITIONS",
    "PER_IMAGE_METRICS",
    "THRESHOLDED_JACCARD_CUTOFF",
    "MetricSelector",
    "SegmentationMetrics",
    "assd",
    "binarize",
    "confusion_counts",
    "hausdorff_distance",
    "hd95",
    "higher_is_better",
    "metric_value",
    "scores_from_counts",
    "surface_distances",
]
