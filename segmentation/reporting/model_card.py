"""Model cards (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019) from a checkpoint and
an evaluation folder written by ``tools/evaluate.py``.

The card follows the paper's sections (model details, intended use, factors, metrics, evaluation
and training data, quantitative analyses, ethical considerations, caveats and recommendations) and
fills them only from recorded facts: the checkpoint (network spec, weights, config, step), the
evaluation's ``metrics.json`` (numbers, their definitions, the split, the command) and
``per_image.csv`` (per-group results when ``metrics.json`` has no ``groups``); the folder is read
with :func:`segmentation.evaluation.results.read_evaluation`. Anything the files do not say is
written as a limitation, not guessed.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import yaml

from segmentation.checkpoint import model_from_checkpoint
from segmentation.evaluation.fairness import fairness_reports
from segmentation.evaluation.results import skipped_line
from segmentation.reporting.tables import format_number, group_reports, markdown_table

__all__ = ["CARD_SECTIONS", "config_hash", "model_card"]

CARD_SECTIONS = (
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Quantitative analyses",
    "Ethical considerations",
    "Caveats and recommendations",
    "Commands",
)


def config_hash(config: dict) -> str:
    """sha256 of the canonical YAML of a config (keys sorted, block style, UTF-8)."""
    text = yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _group_reports(metrics: dict, rows: list[dict]) -> list[dict]:
    """The evaluation's group reports; without them, the skin-tone and tag groups of its
    per-image rows (the groupings ``tools/evaluate.py --groups ita --groups tags`` would give)."""
    if metrics.get("groups"):
        return group_reports(metrics)
    columns = set(rows[0]) if rows else set()
    groupings = [g for g, c in (("ita", "ita_chardon6"), ("tags", "tags")) if c in columns]
    return list(fairness_reports(rows, groupings).values()) if groupings else []


def model_card(
    ckpt: dict,
    *,
    metrics: dict,
    rows: list[dict],
    ckpt_path: str,
    command: list[str] | None = None,
) -> str:
    """The Markdown model card.

    Args:
        ckpt: the loaded checkpoint (``model_spec``, ``model``, ``config``, ``step``, ``best``).
        metrics, rows: :func:`read_evaluation` of the evaluation folder.
        ckpt_path: where the checkpoint was read from (for the commands).
        command: the argv that wrote the card (for the commands).
    """
    spec, config = ckpt["model_spec"], ckpt["config"]
    model = model_from_checkpoint(ckpt)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    data = config.get("data", {})
    tested_on = metrics.get("data", data)  # the evaluation may test another dataset
    train = config.get("train", {})
    synthetic = data.get("name") == "synthetic"
    best = ckpt.get("best") or {}
    run_dir = Path(ckpt_path).resolve().parent.parent
    kwargs = ", ".join(f"{k}={v!r}" for k, v in spec["kwargs"].items())
    lines = [f"# Model card: {spec['name']}", ""]
    lines += [
        "Structure after Mitchell et al., *Model Cards for Model Reporting*, FAT* 2019.",
        "",
        "## Model details",
        "",
        f"- Network: `{spec['name']}({kwargs})` (dermseg registry; rebuilt from the checkpoint).",
        f"- Parameters: {n_params:,} ({n_trainable:,} trainable; buffers not counted).",
        f"- Training steps: {ckpt.get('step')}; batch size {train.get('batch_size')}; optimiser "
        f"`{config.get('optim', {}).get('name')}`, schedule `{config.get('sched', {}).get('name')}`"
        f", loss `{config.get('loss', {}).get('name')}`.",
        f"- Checkpoint selection: best validation {best.get('metric', 'metric')} = "
        f"{format_number(best.get('value', float('nan')))} (validation split only, never the "
        "test split).",
        f"- Config hash: `sha256:{config_hash(config)}` (canonical YAML, keys sorted).",
        f"- Checkpoint: `{ckpt_path}`.",
        "- Output: logits `[B, K, H, W]`; lesion = `sigmoid(logit) > 0.5` (argmax for K > 1).",
        "- Licence and contact: those of the dermseg repository.",
        "",
        "## Intended use",
        "",
        "- Primary use: research on skin-lesion segmentation in dermoscopy images - comparing "
        "architectures, ablations and fairness analyses under one evaluation protocol.",
        "- Primary users: machine-learning and medical-imaging researchers.",
        "- Out of scope: any clinical use. This model is **not a medical device** and not a "
        "diagnostic tool; it must not inform diagnosis, triage or treatment of any person. "
        "Also out of scope: clinical (non-dermoscopic) photographs, other body imaging, and "
        "images unlike the training data (see Training data) without a new evaluation.",
        "",
        "## Factors",
        "",
        "- Skin tone (Individual Typology Angle groups; Fitzpatrick type where a dataset provides "
        "it), lesion-skin contrast, lesion size, multiple lesions, lesions touching the border, "
        "hair and other artefacts (synthetic difficulty tags).",
        "- Acquisition: dermoscope, illumination, resolution; the model saw images resized to "
        f"{data.get('image_size', 'their stored size')} px.",
        "",
        "## Metrics",
        "",
        f"Evaluated on the **{metrics.get('split', '?')}** split ({metrics.get('n_images', '?')} "
        f"images) at step {metrics.get('step', '?')}. Headline numbers are per-image means "
        "(macro); global values pool the pixels of all images (micro).",
        "",
    ]
    if "per_image" in metrics:
        lines += [markdown_table(metrics), ""]
    lines += [
        "## Evaluation data",
        "",
        f"- Dataset `{tested_on.get('name')}`, split `{metrics.get('split')}`, settings "
        f"`{_data_settings(tested_on)}`.",
        "",
        "## Training data",
        "",
        f"- Dataset `{data.get('name')}`, split `train` (validation split for model selection), "
        f"settings `{_data_settings(data)}`, augmentation `{data.get('augment', 'default')}`.",
    ]
    if synthetic:
        lines.append(
            "- The images are procedurally generated synthetic dermoscopy images "
            "(`segmentation/data/synthetic.py`), not patient data; their skin parameters are the "
            "ground-truth tone groups."
        )
    lines += ["", "## Quantitative analyses", ""]
    reports = _group_reports(metrics, rows)
    for report in reports:
        lines += [
            f"### {report['metric']} by {report['group_key']}",
            "",
            markdown_table(report),
            "",
        ]
    if not reports:
        lines += ["No per-group results: evaluate with `--groups` to add them.", ""]
    lines += [
        "## Ethical considerations",
        "",
        "- Public dermoscopy datasets are dominated by light skin; per-group numbers on dark skin "
        "rest on few images (see the confidence intervals) or on synthetic images.",
        "- Segmentation errors on some skin tones would propagate to any downstream measurement.",
        "",
        "## Caveats and recommendations",
        "",
    ]
    lines += [f"- {c}" for c in _caveats(config, synthetic, metrics)]
    lines += ["", "## Commands", "", "```sh"]
    lines.append(f"python tools/train.py --cfg {run_dir / 'config.yaml'}  # the resolved config")
    lines.append(metrics.get("command", f"python tools/evaluate.py --ckpt {ckpt_path}"))
    if command:
        lines.append(shlex.join(["python", "tools/model_card.py", *command]))
    lines += ["```", ""]
    return "\n".join(lines)


def _data_settings(data: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items() if k != "name") or "defaults"


def _caveats(config: dict, synthetic: bool, metrics: dict) -> list[str]:
    steps = config.get("train", {}).get("steps", 0)
    out = []
    if synthetic:
        out.append(
            "Trained and evaluated on synthetic images: the numbers say nothing about real "
            "dermoscopy; evaluate on ISIC/PH2 test splits before any conclusion."
        )
    if steps < 10_000:
        out.append(
            f"Short (CPU-sized) schedule of {steps} steps: the model is not converged; compare "
            "networks only at equal, converged schedules."
        )
    out += [
        "Skin-tone groups estimated with ITA from healthy-skin pixels are approximate: published "
        "ITA estimators disagree (Kalb et al. 2023), and lighting and white balance shift ITA.",
        "One training run (one seed): no variance across seeds is reported.",
        "Threshold 0.5 on the sigmoid; no post-processing unless stated in the evaluation command.",
    ]
    if metrics.get("boundary_excluded"):
        out.append(
            f"Boundary metrics exclude {metrics['boundary_excluded']} image(s) with an empty "
            "prediction or ground truth."
        )
    if skipped_line(metrics):  # data.on_error: skip left unreadable files out
        out.append(skipped_line(metrics) + ".")
    return out
