"""Evaluation reports people read: a Markdown page with PNG figures next to it.

``write_report`` assembles the page from an evaluation (``evaluate_model``'s metrics and rows): the
metric table with its definitions, the per-group fairness tables and bar charts with bootstrap
confidence intervals (when the metrics carry ``groups``), a per-image Dice histogram, the best and
worst cases as overlay grids (prediction red, ground truth green), and the training curves read from
the run's TensorBoard events. Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg
canvas, never through ``pyplot`` global state, so reports can be written from threads and servers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segmentation.reporting.tables import format_table, group_reports, markdown_table

__all__ = [
    "case_grid",
    "dice_histogram",
    "group_bar_chart",
    "read_scalars",
    "render_cases",
    "select_cases",
    "training_curves",
    "write_report",
]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def dice_histogram(rows: Sequence[dict], path: Path, metric: str = "dice", bins: int = 20) -> Path:
    """Histogram of the per-image ``metric`` over ``[0, 1]`` with the mean marked."""
    values = np.array([r[metric] for r in rows if not math.isnan(float(r[metric]))], dtype=float)
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.hist(values, bins=np.linspace(0, 1, bins + 1), color="#4c72b0", edgecolor="white")
    if values.size:
        ax.axvline(
            values.mean(), color="#c44e52", linestyle="--", label=f"mean {values.mean():.3f}"
        )
        ax.legend(loc="upper left")
    ax.set(
        xlabel=f"per-image {metric}", ylabel="images", title=f"{metric} over {values.size} images"
    )
    return _save(fig, path)


def group_bar_chart(report: dict, path: Path) -> Path:
    """Bar per group (mean of the metric) with its bootstrap CI and ``n`` under the name."""
    names = list(report["groups"])
    stats = [report["groups"][n] for n in names]
    means = np.array([s["mean"] for s in stats])
    low = np.array([s["ci_low"] for s in stats])
    high = np.array([s["ci_high"] for s in stats])
    # groups of one image have no interval (NaN): draw no whisker
    err = np.nan_to_num(np.stack([means - low, high - means]), nan=0.0)
    fig = Figure(figsize=(max(4, 1.1 * len(names) + 1.5), 3.4))
    ax = fig.add_subplot()
    ax.bar(range(len(names)), means, yerr=err, capsize=4, color="#55a868")
    labels = [f"{n}\n(n={s['n']})" for n, s in zip(names, stats, strict=True)]
    ax.set_xticks(range(len(names)), labels)
    ax.set(
        ylabel=f"mean {report['metric']}",
        title=f"by {report['group_key']} ({100 * report['ci']:g} % bootstrap CI)",
    )
    ax.set_ylim(0, max(1.0, float(np.nanmax(high)) if np.isfinite(high).any() else 1.0))
    return _save(fig, path)


def case_grid(tiles: Sequence[tuple[np.ndarray, str]], path: Path, title: str, ncols: int = 4):
    """Grid of ``(uint8 [H, W, 3] image, caption)`` tiles."""
    nrows = max(1, math.ceil(len(tiles) / ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.8 * nrows))
    fig.suptitle(title)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.axis("off")
        if i < len(tiles):
            ax.imshow(tiles[i][0])
            ax.set_title(tiles[i][1], fontsize=8)
    return _save(fig, path)


def read_scalars(tb_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series in a TensorBoard folder: ``{tag: (steps, values)}`` (empty if none)."""
    from tensorboard.backend.event_processing import event_accumulator

    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir() or not list(tb_dir.glob("events.out.tfevents.*")):
        return {}
    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = ([e.step for e in events], [e.value for e in events])
    return out


def training_curves(scalars: dict[str, tuple[list[int], list[float]]], path: Path) -> Path:
    """Two panels: training loss terms (log scale when positive) and validation per-image
    metrics."""
    train = {t: v for t, v in scalars.items() if t.startswith("train/") and "loss" in t}
    val = {t: v for t, v in scalars.items() if t.startswith("val/per_image/") and "hd" not in t}
    val = {t: v for t, v in val.items() if "assd" not in t}
    fig = Figure(figsize=(10, 3.4))
    for k, (series, title) in enumerate(((train, "training loss"), (val, "validation"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for tag, (steps, values) in sorted(series.items()):
            ax.plot(
                steps, values, marker="o" if len(steps) < 20 else None, label=tag.split("/")[-1]
            )
        if k == 0 and series and all(min(v) > 0 for _, v in series.values()):
            ax.set_yscale("log")
        ax.set(xlabel="step", title=title)
        if series:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def select_cases(rows: Sequence[dict], k: int, metric: str = "dice") -> tuple[list, list]:
    """Ids of the ``k`` best and ``k`` worst images by ``metric`` (NaN left out, ties by id)."""
    valid = [r for r in rows if not math.isnan(float(r[metric]))]
    ranked = sorted(valid, key=lambda r: (float(r[metric]), str(r["id"])))
    worst = [r["id"] for r in ranked[:k]]
    best = [r["id"] for r in ranked[::-1][:k]]
    return best, worst


@torch.no_grad()
def render_cases(model, dataset, ids: Sequence, *, device, predictor=None, scores=None):
    """Overlay tiles (prediction red, ground truth green) of the dataset items with these ids."""
    from segmentation.evaluation.evaluate import predict_logits
    from segmentation.evaluation.metrics import binarize
    from segmentation.reporting.visual import denormalize, overlay_mask

    predictor = predictor or predict_logits
    index = {str(i): n for n, i in enumerate(getattr(dataset, "ids", []))}
    was_training = model.training
    model.eval()
    tiles = []
    for image_id in ids:
        sample = dataset[index[str(image_id)]] if index else _find(dataset, image_id)
        logits = predictor(model, sample["image"][None].to(device)).float().cpu()
        pred = binarize(logits)[0].bool()
        tile = overlay_mask(
            denormalize(sample["image"]), pred.numpy(), reference=sample["mask"].numpy()
        )
        caption = str(image_id) if scores is None else f"{image_id}\ndice {scores[image_id]:.3f}"
        tiles.append((tile, caption))
    model.train(was_training)
    return tiles


def _find(dataset, image_id):
    for n in range(len(dataset)):
        sample = dataset[n]
        if str(sample["id"]) == str(image_id):
            return sample
    raise KeyError(f"image id '{image_id}' is not in the dataset ({len(dataset)} items).")


def write_report(
    out: str | Path,
    *,
    metrics: dict,
    rows: Sequence[dict],
    title: str,
    header: dict[str, Any] | None = None,
    model=None,
    dataset=None,
    device=None,
    predictor=None,
    run_dir: str | Path | None = None,
    n_cases: int = 4,
    metric: str = "dice",
) -> Path:
    """Write ``out/report.md`` and its figures ``out/*.png``; return the Markdown path.

    Args:
        out: report folder (created).
        metrics, rows: ``evaluate_model`` results (``metrics["groups"]`` adds fairness sections).
        title: page title.
        header: key/value lines under the title (checkpoint, split, step...).
        model, dataset, device, predictor: to render the best/worst cases (skipped when None).
        run_dir: the run folder whose ``tb/`` events give the training curves.
        n_cases: best and worst cases shown each.
        metric: the per-image metric of the histogram and the case ranking.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in (header or {}).items()]
    lines += ["", "## Metrics", "", markdown_table(metrics), ""]
    for report in group_reports(metrics):
        key = report["group_key"]
        png = group_bar_chart(report, out / f"groups_{key}.png")
        lines += [f"## {report['metric']} by {key}", "", markdown_table(report), ""]
        lines += [f"![{report['metric']} by {key}]({png.name})", ""]
    dice_histogram(rows, out / f"{metric}_histogram.png", metric=metric)
    lines += [f"## Per-image {metric}", "", f"![{metric} histogram]({metric}_histogram.png)", ""]
    if model is not None and dataset is not None:
        best, worst = select_cases(rows, n_cases, metric)
        scores = {r["id"]: float(r[metric]) for r in rows}
        lines += ["## Best and worst cases", "", "Prediction red, ground truth green.", ""]
        for name, ids in (("best", best), ("worst", worst)):
            tiles = render_cases(
                model, dataset, ids, device=device, predictor=predictor, scores=scores
            )
            case_grid(tiles, out / f"cases_{name}.png", f"{name} {len(ids)} by {metric}")
            lines += [f"![{name} cases](cases_{name}.png)", ""]
        table_rows = [(str(i), scores[i]) for i in best] + [(str(i), scores[i]) for i in worst]
        lines += [format_table(("image", metric), table_rows), ""]
    lines += ["## Training curves", ""]
    scalars = read_scalars(Path(run_dir) / "tb") if run_dir is not None else {}
    if scalars:
        training_curves(scalars, out / "training_curves.png")
        lines += ["![training curves](training_curves.png)", ""]
    else:
        lines += [f"No TensorBoard events found under `{run_dir}/tb`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
