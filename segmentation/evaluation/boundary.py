"""Boundary metrics of one binary mask pair, in pixels: Hausdorff distance, HD95 and ASSD.

Both masks' 4-connected boundaries (mask minus its erosion by a cross; outside the image counts as
background, as in MONAI's ``get_mask_edges`` and medpy's ``__surface_distances``) are compared with
exact Euclidean distances between boundary pixels, found with a KD-tree (what MONAI does on CPU):
the cost grows with the number of boundary pixels, not the image size. Two published definitions
differ and are both offered:

* HD95 ``monai`` (``monai.metrics.compute_hausdorff_distance(percentile=95)``): max of the two
  directed 95th percentiles. ``medpy`` (``medpy.metric.binary.hd95``): 95th percentile of the
  pooled distances of both directions.
* ASSD ``monai`` (``compute_average_surface_distance(symmetric=True)``): mean of the pooled
  distances. ``medpy`` (``medpy.metric.binary.assd``): mean of the two directed means.

Percentiles interpolate linearly (``numpy.percentile``, like ``torch.quantile``). The value is NaN
when either mask is empty. Example: an 8x8 square at rows/cols 2..9 of a 32x32 image, the
prediction adding pixels (22, 20) and (22, 21) (17.03 and 17.69 px from the square's corner) gives
HD 17.6918, HD95 9.3662 (monai) vs 0.0 (medpy), ASSD 0.5986 (monai) vs 0.5787 (medpy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

HD95_DEFINITIONS = {
    "monai": "monai: max of directed 95th percentiles, pixels",
    "medpy": "medpy: 95th percentile of pooled distances of both directions, pixels",
}
ASSD_DEFINITIONS = {
    "monai": "monai: mean of pooled distances of both directions, pixels",
    "medpy": "medpy: mean of the two directed mean distances, pixels",
}


def _check_definition(definition: str, choices: dict[str, str], what: str) -> None:
    if definition not in choices:
        raise ValueError(f"{what} definition must be one of {list(choices)}, got {definition!r}.")


def as_binary_mask(x: Any, name: str) -> torch.Tensor:
    """``x`` (tensor or array of bools or 0/1 integers) as a bool tensor; anything else raises.

    Floats are refused on purpose: probabilities must be thresholded first (``docs/protocol.md``).
    """
    x = torch.as_tensor(x)
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point() or x.is_complex():
        raise ValueError(
            f"{name} must be a binary integer or bool mask, got dtype {x.dtype}; threshold first "
            "(binarize(logits) for predictions, > 128 for masks read from disk)."
        )
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > 1):
        raise ValueError(
            f"{name} must hold only 0 and 1, got values in [{int(x.min())}, {int(x.max())}]; "
            "binarise masks read from disk with > 128 and map multi-class labels to (label == 1)."
        )
    return x.bool()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (outside the image counts as background)."""
    m = np.pad(mask, 1)
    interior = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~interior


def surface_distances(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed boundary distances of one image, in pixels.

    Args:
        pred: binary prediction ``[H, W]``.
        target: binary ground truth ``[H, W]``.

    Returns:
        ``(pred -> target, target -> pred)`` float64 distance arrays, or ``None`` if either
        mask is empty.
    """
    p = as_binary_mask(pred, "pred").cpu().numpy()
    t = as_binary_mask(target, "target").cpu().numpy()
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"expected two [H, W] masks of one shape, got {p.shape} and {t.shape}.")
    if not p.any() or not t.any():
        return None
    bp, bt = np.argwhere(_boundary(p)), np.argwhere(_boundary(t))  # (n, 2) pixel coordinates
    return cKDTree(bt).query(bp, k=1)[0], cKDTree(bp).query(bt, k=1)[0]


def _per_image(fn, pred: Any, target: Any) -> float | np.ndarray:
    p, t = torch.as_tensor(pred), torch.as_tensor(target)
    if p.ndim == 2:
        return fn(surface_distances(p, t))
    if p.ndim != 3 or p.shape != t.shape:
        raise ValueError(
            f"expected masks [H, W] or [B, H, W] of one shape, got {tuple(p.shape)} and "
            f"{tuple(t.shape)}."
        )
    return np.array(
        [fn(surface_distances(a, b)) for a, b in zip(p, t, strict=True)], dtype=np.float64
    )


def _hd_from(
    d: tuple[np.ndarray, np.ndarray] | None, percentile: float | None, definition: str
) -> float:
    if d is None:
        return math.nan
    if percentile is None:
        return float(max(d[0].max(), d[1].max()))
    if definition == "monai":
        return float(max(np.percentile(d[0], percentile), np.percentile(d[1], percentile)))
    return float(np.percentile(np.concatenate(d), percentile))


def _assd_from(d: tuple[np.ndarray, np.ndarray] | None, definition: str) -> float:
    if d is None:
        return math.nan
    if definition == "monai":
        return float(np.concatenate(d).mean())
    return float((d[0].mean() + d[1].mean()) / 2)


def hausdorff_distance(
    pred: Any, target: Any, percentile: float | None = None, definition: str = "monai"
) -> float | np.ndarray:
    """(Percentile) Hausdorff distance in pixels; NaN if either mask is empty.

    Args:
        pred: binary ``[H, W]`` or ``[B, H, W]``.
        target: same shape as ``pred``.
        percentile: ``None`` for the maximum (both definitions agree), else in [0, 100].
        definition: ``"monai"`` (max of directed percentiles) or ``"medpy"`` (percentile of
            pooled distances).

    Returns:
        A float for one image, a float64 array ``[B]`` for a batch.
    """
    _check_definition(definition, HD95_DEFINITIONS, "Hausdorff")
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100] or None, got {percentile}.")
    return _per_image(lambda d: _hd_from(d, percentile, definition), pred, target)


def hd95(pred: Any, target: Any, definition: str = "monai") -> float | np.ndarray:
    """95th-percentile Hausdorff distance in pixels (see :func:`hausdorff_distance`)."""
    return hausdorff_distance(pred, target, percentile=95, definition=definition)


def assd(pred: Any, target: Any, definition: str = "monai") -> float | np.ndarray:
    """Average symmetric surface distance in pixels; NaN if either mask is empty.

    Args:
        pred: binary ``[H, W]`` or ``[B, H, W]``.
        target: same shape as ``pred``.
        definition: ``"monai"`` (mean of pooled distances, MONAI ``symmetric=True``) or
            ``"medpy"`` (mean of the two directed means, ``medpy.metric.binary.assd``).
    """
    _check_definition(definition, ASSD_DEFINITIONS, "ASSD")
    return _per_image(lambda d: _assd_from(d, definition), pred, target)
