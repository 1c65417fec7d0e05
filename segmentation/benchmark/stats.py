"""Statistics of a multi-seed benchmark row: spread over seeds, paired difference, convergence.

* Spread: mean and sample standard deviation (``ddof=1``) over the seeds of each per-seed number
  (per-image means of Dice, IoU, thresholded Jaccard, HD95, the worst skin-tone group's Dice and the
  hard-tag Dice).
* Difference to the reference row (U-Net): for every test image, its Dice averaged over the seeds
  minus the reference's, paired by image id; the mean of these differences and its percentile
  bootstrap 95 % CI resampling images (:func:`segmentation.evaluation.groups.bootstrap_ci`). The
  interval reflects which test images were drawn, with the seed noise averaged out; it is called
  significant when it excludes 0.
* Convergence: mean over seeds of the validation Dice at the evaluation steps (25/50/75/100 % of the
  row's steps); a row whose mean rose by more than ``threshold`` over the last quarter is flagged
  "still improving".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from segmentation.evaluation.groups import bootstrap_ci

BOOTSTRAP = {"n_boot": 10000, "ci": 0.95, "seed": 0}
CONVERGENCE_THRESHOLD = 0.01


def mean_std(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n"}`` of the finite values (std: sample, ``ddof=1``; None below 2)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def seed_mean_per_image(per_seed: Sequence[dict], key: str = "per_image_dice") -> np.ndarray:
    """Per-image values averaged over seeds: ``[n_images]`` from ``per_seed[s][key]`` lists.

    Raises:
        ValueError: the seeds hold different numbers of images.
    """
    lengths = {len(s[key]) for s in per_seed}
    if len(lengths) != 1:
        raise ValueError(
            f"the seeds of a row hold different numbers of test images {sorted(lengths)}; every "
            "seed must be evaluated on the same test split."
        )
    return np.asarray([s[key] for s in per_seed], dtype=np.float64).mean(axis=0)


def paired_delta(
    row_per_seed: Sequence[dict],
    ref_per_seed: Sequence[dict],
    *,
    ids: Sequence[str] | None = None,
    ref_ids: Sequence[str] | None = None,
    n_boot: int = BOOTSTRAP["n_boot"],
    ci: float = BOOTSTRAP["ci"],
    seed: int = BOOTSTRAP["seed"],
) -> dict:
    """Mean paired difference of per-image Dice (row - reference) with its bootstrap CI.

    Args:
        row_per_seed, ref_per_seed: per-seed records, each with ``per_image_dice`` (one value per
            test image, in the order of ``ids``/``ref_ids``).
        ids, ref_ids: image ids of the two rows (checked equal as sets, then aligned); None when
            both lists are already in the same order.
        n_boot, ci, seed: bootstrap resamples, confidence level, generator seed.

    Returns:
        ``{"mean", "ci95": [low, high], "significant", "n_images", "n_boot"}``; ``significant``
        means the interval excludes 0.
    """
    row = seed_mean_per_image(row_per_seed)
    ref = seed_mean_per_image(ref_per_seed)
    if ids is not None and ref_ids is not None and list(ids) != list(ref_ids):
        if sorted(ids) != sorted(ref_ids):
            raise ValueError("the two rows were tested on different images; pair by the same ids.")
        position = {image: i for i, image in enumerate(ref_ids)}
        ref = ref[[position[image] for image in ids]]
    if row.shape != ref.shape:
        raise ValueError(f"{row.size} vs {ref.size} test images; pair by the same test split.")
    diff = row - ref
    low, high = bootstrap_ci(diff, n_boot=n_boot, ci=ci, rng=np.random.default_rng(seed))
    return {
        "mean": float(diff.mean()),
        "ci95": [low, high],
        "significant": bool(low > 0 or high < 0),
        "n_images": int(diff.size),
        "n_boot": n_boot,
    }


def convergence(curves: Sequence[Sequence[Sequence[float]]], steps: int,
                threshold: float = CONVERGENCE_THRESHOLD) -> dict:  # fmt: skip
    """Mean validation-Dice curve over seeds and the "still improving" flag.

    Args:
        curves: one ``[[step, val_dice], ...]`` list per seed (the same steps in every seed).
        steps: the row's training steps (100 %).
        threshold: the rise over the last quarter that flags a row.

    Returns:
        ``{"steps", "fractions", "mean_val_dice", "rise_last_quarter", "still_improving"}``; the
        rise is the mean at 100 % minus the mean at the last evaluation at or before 75 % (None
        when the curve has no such point).
    """
    points = sorted({int(s) for curve in curves for s, _ in curve})
    means = []
    for step in points:
        values = [d for curve in curves for s, d in curve if int(s) == step]
        means.append(statistics.fmean(values) if len(values) == len(curves) else None)
    rise = None
    earlier = [i for i, s in enumerate(points) if s <= 0.75 * steps and means[i] is not None]
    if points and points[-1] == steps and means[-1] is not None and earlier:
        rise = means[-1] - means[earlier[-1]]
    return {
        "steps": points,
        "fractions": [s / steps for s in points],
        "mean_val_dice": means,
        "rise_last_quarter": rise,
        "still_improving": rise is not None and rise > threshold,
        "threshold": threshold,
    }
