"""Markdown tables: the one table renderer of the tools (metrics results, group reports, rows)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _cell(value: Any, floatfmt: str) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, floatfmt)
    return str(value)


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".4f"
) -> str:
    """A GitHub markdown table; floats formatted with ``floatfmt``, NaN shown as ``n/a``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells for {len(headers)} headers.")
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines)


def _metrics_table(result: dict, floatfmt: str) -> str:
    n, excluded = result["n_images"], result["boundary_excluded"]
    rows: list[tuple[str, Any]] = []
    for key, value in result["per_image"].items():
        boundary = key in ("hd95", "assd")
        if boundary and excluded is None:
            label = f"{key} (not computed)"
        elif boundary:
            label = f"{key} (px, mean of {n - excluded} images)"
        else:
            label = f"{key} (per-image mean)"
        rows.append((label, value))
    rows += [(f"global {k} (micro, pooled pixels)", v) for k, v in result["global"].items()]
    rows += [("images", n)]
    if excluded is not None:
        rows += [("boundary excluded (empty mask)", excluded)]
    table = format_table(("metric", "value"), rows, floatfmt)
    notes = "\n".join(f"- {k}: {v}" for k, v in result.get("definitions", {}).items())
    return table + ("\n\nDefinitions:\n\n" + notes if notes else "")


def _groups_table(report: dict, floatfmt: str) -> str:
    pct = f"{100 * report['ci']:g} % CI"
    rows = [
        (
            name,
            g["n"],
            g["mean"],
            f"[{_cell(g['ci_low'], floatfmt)}, {_cell(g['ci_high'], floatfmt)}]",
        )
        for name, g in report["groups"].items()
    ]
    table = format_table(
        (report["group_key"], "n", f"mean {report['metric']}", pct), rows, floatfmt
    )
    summary = (
        f"worst group: {report['worst_group']} ({_cell(report['worst_value'], floatfmt)}); "
        f"gap (max - min): {_cell(report['gap'], floatfmt)}; "
        f"NAR: {_cell(report['nar'], floatfmt)}; "
        f"rows without a group or value: {report['n_missing']}; bootstrap: {report['n_boot']} "
        f"resamples, seed {report['seed']}."
    )
    return f"{table}\n\n{summary}"


def markdown_table(result: dict, floatfmt: str = ".4f") -> str:
    """Markdown for a :meth:`SegmentationMetrics.compute` result or a :func:`group_report`."""
    if "per_image" in result and "global" in result:
        return _metrics_table(result, floatfmt)
    if "groups" in result and "group_key" in result:
        return _groups_table(result, floatfmt)
    raise ValueError(
        f"markdown_table expects a metrics result (keys per_image, global) or a group report (keys "
        f"groups, group_key), got keys {sorted(result)}."
    )
