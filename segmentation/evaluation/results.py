"""The evaluation folder: written from an :func:`evaluate_checkpoint` result, read back by the
model cards.

``write_evaluation(result, out)`` writes

- ``out/metrics.json``: the result's ``metrics`` payload (numbers, definitions, provenance);
- ``out/per_image.csv``: one row per scored image with its metadata and skin-tone columns;
- ``out/metrics.md``: the same numbers as Markdown tables (and ``out/robustness.png`` for a
  robustness evaluation); a split scored on fewer images than it lists (``data.on_error: skip``)
  says so on its first line, naming the skipped files;
- with ``report=DIR``, ``DIR/report.md`` and its figures
  (:func:`segmentation.reporting.figures.write_report`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from segmentation.reporting.tables import format_number, format_table, markdown_table

__all__ = ["evaluation_markdown", "read_evaluation", "skipped_line", "write_evaluation"]


def write_rows(rows: list[dict], path: Path) -> None:
    """Per-image rows as CSV (columns: union of the rows' keys, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def skipped_line(metrics: dict) -> str:
    """``"Scored on N of M images; skipped: id (error), ..."``, or ``""`` when nothing was
    skipped."""
    skipped = metrics.get("skipped_files") or []
    if not skipped:
        return ""
    n = metrics["n_images"]
    files = "; ".join(f"{s['id']} ({s['error']})" for s in skipped)
    return f"Scored on {n} of {n + len(skipped)} images; skipped: {files}"


def evaluation_markdown(metrics: dict) -> str:
    """The Markdown of ``metrics.md``: metric tables, then the optional evaluations and groups."""
    from segmentation.evaluation.fairness import GROUP_TITLES

    parts = [f"# {metrics['network']} on {metrics['data']['name']} {metrics['split']}"]
    if skipped_line(metrics):
        parts.append(skipped_line(metrics) + ".")
    parts.append(markdown_table(metrics))
    if "postprocessed" in metrics:
        post = {k: v for k, v in metrics["postprocessed"].items() if k != "steps"}
        steps = ", ".join(metrics["postprocessed"]["steps"])
        parts.append(f"## With post-processing ({steps})\n\n{markdown_table(post)}")
    if "robustness" in metrics:
        from segmentation.evaluation.robustness import robustness_tables

        parts.append(f"## Robustness\n\n{robustness_tables(metrics['robustness'])}")
    if "sampling_steps" in metrics:
        keys = ("steps", "dice", "iou", "global_dice")
        rows = [
            [*(r[k] for k in keys), format_number(r["ms_per_image"], ".1f")]  # ms: one decimal
            for r in metrics["sampling_steps"]
        ]
        table = format_table(("K", "Dice", "IoU", "global Dice", "ms/image"), rows)
        parts.append(f"## Sampling steps\n\n{table}")
    if "uncertainty" in metrics:
        u = metrics["uncertainty"]
        parts.append(
            f"## Uncertainty ({u['n_samples']} samples)\n\nAUROC of the per-pixel variance for "
            f"wrong pixels: {format_number(u['auroc_wrong_pixels'])} ({u['n_wrong']} of "
            f"{u['n_pixels']} pixels wrong; Dice of the {u['n_samples']}-sample mean "
            f"{format_number(u['dice_of_mean'])})."
        )
    for column, report in (metrics.get("groups") or {}).items():
        title = GROUP_TITLES.get(column, column)
        parts.append(f"## Dice by {title}\n\n{markdown_table(report)}")
    return "\n\n".join(parts) + "\n"


def write_evaluation(result: dict, out: str | Path, *, report: str | Path | None = None) -> str:
    """Write an :func:`~segmentation.evaluation.checkpoint_eval.evaluate_checkpoint` result.

    Args:
        result: the result dict (``metrics``, ``rows``; ``model``, ``dataset``, ``device`` for the
            report's best and worst cases).
        out: the evaluation folder (created): ``metrics.json``, ``per_image.csv``, ``metrics.md``.
        report: also write ``report/report.md`` with PNG figures (metric and group tables, Dice
            histogram, best/worst overlays, the run's training curves, robustness).

    Returns:
        The Markdown of ``metrics.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, rows = result["metrics"], result["rows"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_rows(rows, out / "per_image.csv")
    text = evaluation_markdown(metrics)
    (out / "metrics.md").write_text(text)
    if "robustness" in metrics:
        from segmentation.evaluation.robustness import degradation_plot

        degradation_plot(metrics["robustness"], out / "robustness.png")
    if report is not None:
        _write_report(result, Path(report))
    return text


def _write_report(result: dict, folder: Path) -> Path:
    from segmentation.reporting.figures import write_report

    metrics = result["metrics"]
    header = {k: metrics[k] for k in ("checkpoint", "step", "split", "command") if k in metrics}
    header["data"] = metrics["data"]["name"]
    if skipped_line(metrics):
        header["images"] = skipped_line(metrics)
    checkpoint = metrics.get("checkpoint")
    path = write_report(
        folder,
        metrics=metrics,
        rows=result["rows"],
        title=f"{metrics['network']} on {metrics['data']['name']} {metrics['split']}",
        header=header,
        model=result.get("model"),
        dataset=result.get("dataset"),
        device=result.get("device"),
        # RUN/checkpoints/best.pt -> RUN, whose tb/ holds the training curves
        run_dir=Path(checkpoint).resolve().parent.parent if checkpoint else None,
    )
    if "robustness" in metrics:  # the degradation plot joins the report
        from segmentation.evaluation.robustness import degradation_plot, robustness_tables

        degradation_plot(metrics["robustness"], folder / "robustness.png")
        with open(path, "a") as f:
            f.write(f"\n## Robustness\n\n{robustness_tables(metrics['robustness'])}\n\n")
            f.write("![Dice under corruptions and attacks](robustness.png)\n")
    return path


def read_evaluation(eval_dir: str | Path) -> tuple[dict, list[dict]]:
    """``(metrics.json, per_image.csv rows)`` of an evaluation folder (rows empty if no CSV);
    CSV values are strings."""
    eval_dir = Path(eval_dir)
    path = eval_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"'{path}' not found; --eval takes the --out folder of tools/evaluate.py."
        )
    metrics = json.loads(path.read_text())
    rows = []
    if (eval_dir / "per_image.csv").is_file():
        with open(eval_dir / "per_image.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    return metrics, rows
