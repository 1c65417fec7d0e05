"""Group (fairness) reports over per-image rows: group means with bootstrap confidence intervals.

The group report follows ``docs/protocol.md`` ("Skin tone and fairness"): per group n, mean and a
percentile bootstrap confidence interval (groups are small), the worst group, the gap (max - min of
the group means) and the normalised accuracy range NAR = (max - min) / mean of the group means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segmentation.evaluation.metrics import METRICS


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset)


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int, ci: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaN for fewer than 2 values)."""
    if values.size < 2:
        return math.nan, math.nan
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // values.size)  # bound memory of the (chunk, n) index matrix
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def group_report(
    rows: Sequence[dict],
    group_key: str,
    metric: str = "dice",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    order: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Per-group statistics of a per-image metric.

    Args:
        rows: per-image dicts (``SegmentationMetrics.rows()`` with metadata such as the ITA group).
        group_key: the row key holding the group (e.g. ``ita_group``, ``fitzpatrick``); a list
            value (difficulty tags) counts the image in each listed group.
        metric: the row key holding the value (``dice``, ``iou``, ``hd95``...); NaN values are
            left out.
        n_boot: bootstrap resamples per group.
        seed: seed of the bootstrap generator (groups are resampled in report order).
        ci: confidence level of the percentile interval.
        order: group order in the report (e.g. a bin preset's order); default sorted by name.

    Returns:
        ``{"group_key", "metric", "ci", "n_boot", "seed", "groups": {name: {"n", "mean", "ci_low",
        "ci_high"}}, "worst_group", "worst_value", "gap", "nar", "n_missing"}``. Group names are
        strings (JSON keys); the worst group has the lowest mean, or the highest for distances
        (``hd95``, ``assd``).
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}; e.g. 0.95 for a 95 % interval.")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    values: dict[str, list[float]] = {}
    n_missing = 0
    for i, row in enumerate(rows):
        if metric not in row:
            raise KeyError(f"row {i} has no metric '{metric}'; its keys are {sorted(row)}.")
        group = row.get(group_key)
        value = float(row[metric])
        # a list-valued group (difficulty tags) puts the image in each of its groups
        members = [g for g in group if not _is_missing(g)] if _is_multi(group) else [group]
        if not members or _is_missing(members[0]) or math.isnan(value):
            n_missing += 1
            continue
        for member in members:
            values.setdefault(str(member), []).append(value)
    if not values:
        raise ValueError(
            f"no row has both a group '{group_key}' and a finite '{metric}' ({len(rows)} rows); "
            "check that the group column was added to the rows."
        )
    names = sorted(values) if order is None else [str(g) for g in order if str(g) in values]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"groups {unknown} are missing from order={list(order)}; add them.")

    higher = METRICS.get(metric)[0].higher_is_better if metric in METRICS else True
    rng = np.random.default_rng(seed)
    groups = {}
    for name in names:
        v = np.asarray(values[name], dtype=np.float64)
        low, high = bootstrap_ci(v, n_boot=n_boot, ci=ci, rng=rng)
        groups[name] = {"n": int(v.size), "mean": float(v.mean()), "ci_low": low, "ci_high": high}
    means = np.array([g["mean"] for g in groups.values()])
    worst = names[int(np.argmin(means) if higher else np.argmax(means))]
    gap = float(means.max() - means.min())
    mean_of_means = float(means.mean())
    return {
        "group_key": group_key,
        "metric": metric,
        "ci": ci,
        "n_boot": n_boot,
        "seed": seed,
        "groups": groups,
        "worst_group": worst,
        "worst_value": groups[worst]["mean"],
        "gap": gap,
        "nar": gap / mean_of_means if mean_of_means != 0 else math.nan,
        "n_missing": n_missing,
    }
