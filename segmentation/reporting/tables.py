"""Markdown tables and README sections: the one table renderer, number formatter and marker
writer of the tools (metrics results, group reports, rows, generated README tables)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def format_number(value: Any, fmt: str = ".4f", *, missing: str = "n/a") -> str:
    """One table cell: real numbers with ``fmt``, ``None`` and NaN as ``missing``, others ``str``.

    Integers (counts) and booleans are written as they are, so an image count never becomes
    ``12.0000``; numpy floats count as floats.

    Args:
        value: the cell value.
        fmt: format spec of non-integer numbers (``".4f"`` for scores, ``".2f"`` for sizes...).
        missing: text for ``None`` and NaN (``"n/a"`` in reports, ``"-"`` in the README tables).
    """
    if value is None:
        return missing
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return missing if math.isnan(value) else format(value, fmt)
    return str(value)


def replace_between_markers(text: str, start: str, end: str, body: str) -> str:
    """``text`` with everything between the ``start`` and ``end`` marker lines replaced by ``body``.

    The markers stay (``start``, newline, ``body``, newline, ``end``), so a second call with the
    same body returns ``text`` unchanged and the hand-written rest of the file never moves.

    Raises:
        ValueError: a marker is missing, appears more than once, or ``end`` precedes ``start``.
    """
    counts = (text.count(start), text.count(end))
    if counts != (1, 1) or text.index(end) < text.index(start):
        raise ValueError(
            f"expected the markers {start} and {end} once each, in that order (found "
            f"{counts[0]} and {counts[1]}); add them around the generated section."
        )
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def group_reports(metrics: dict) -> list[dict]:
    """The group reports of an evaluation: ``metrics["groups"]`` is ``{column: group_report}``.

    That is the one shape :func:`~segmentation.evaluation.evaluate.evaluate_checkpoint` writes
    (``metrics.json``) and the reports and model cards read; an absent or empty entry gives ``[]``.

    Raises:
        ValueError: ``metrics["groups"]`` has another shape (a bare report, a list).
    """
    groups = metrics.get("groups") or {}
    shaped = isinstance(groups, dict) and all(
        isinstance(r, dict) and {"group_key", "groups"} <= set(r) for r in groups.values()
    )
    if not shaped:
        raise ValueError(
            "metrics['groups'] must map each group column to its group_report (e.g. {'ita_group': "
            f"{{'group_key': 'ita_group', ...}}}}), got {type(groups).__name__} with keys "
            f"{sorted(groups) if isinstance(groups, dict) else '-'}; build it with "
            "segmentation.evaluation.fairness.fairness_reports."
        )
    return list(groups.values())


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".4f"
) -> str:
    """A GitHub markdown table; floats formatted with ``floatfmt``, NaN shown as ``n/a``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells for {len(headers)} headers.")
        lines.append("| " + " | ".join(format_number(v, floatfmt) for v in row) + " |")
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
            f"[{format_number(g['ci_low'], floatfmt)}, {format_number(g['ci_high'], floatfmt)}]",
        )
        for name, g in report["groups"].items()
    ]
    table = format_table(
        (report["group_key"], "n", f"mean {report['metric']}", pct), rows, floatfmt
    )
    summary = (
        f"worst group: {report['worst_group']} ({format_number(report['worst_value'], floatfmt)}); "
        f"gap (max - min): {format_number(report['gap'], floatfmt)}; "
        f"NAR: {format_number(report['nar'], floatfmt)}; "
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
