"""Evaluate a checkpoint on a split of its own data or of another dataset: the library behind
``tools/evaluate.py``, the benchmark suites and the model cards.

:func:`evaluate_checkpoint` needs only the checkpoint (network specification, weights and the
experiment config are inside). It rebuilds the network, builds the split with the evaluation
transform, runs :func:`~segmentation.evaluation.evaluate.evaluate_model`, adds the skin-tone
columns, the group (fairness) reports and the optional evaluations (label-free post-processing,
robustness, sampling steps), and returns everything in one dict;
:func:`~segmentation.evaluation.results.write_evaluation` writes it to a folder.

Cross-dataset testing (train on ISIC 2018, test on PH2, ISIC 2017 or DDI) replaces the
checkpoint's data section: ``data=`` takes a section (a dict, or a YAML file with one top-level
``data:`` mapping, as in ``experiments/data/``). The new section keeps the checkpoint's input
pipeline (:data:`INPUT_KEYS`: image size, pre-processing, extra channels) unless it sets them;
the ImageNet normalisation is the same for every dataset. ``overrides`` (``data.key=value``,
``eval.key=value``, ``train.device=...``) apply afterwards. Sections fixed by the checkpoint
(:data:`FIXED_SECTIONS`: the network and how it was trained) cannot be overridden.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from segmentation.config import Config, apply_override, validate
from segmentation.errors import ConfigError, DataError, UserError
from segmentation.evaluation.fairness import CONTRAST_BINS

__all__ = [
    "FIXED_SECTIONS",
    "INPUT_KEYS",
    "evaluate_checkpoint",
    "evaluation_config",
    "read_data_section",
]

# Data keys that define what the network sees; a replacement data section inherits them.
INPUT_KEYS = ("image_size", "preprocess", "extra_channels")
# Sections an evaluation cannot change: the network is the checkpoint's, its training is done.
FIXED_SECTIONS = ("model", "loss", "optim", "sched")
_REPLACE_HINT = (
    "To test on another dataset, replace the checkpoint's data section instead: "
    "tools/evaluate.py --data-name NAME --data-root DIR, or --data FILE.yaml (experiments/data/ "
    "has one per dataset); in Python evaluate_checkpoint(ckpt, data=...)."
)


def read_data_section(path: str | Path) -> dict:
    """The data section of a YAML file holding one top-level ``data:`` mapping with a ``name``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file '{path}' not found; experiments/data/ holds one per supported dataset."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())
        raise ConfigError(f"data file '{path}' is not valid YAML: {problem}") from None
    if not (
        isinstance(raw, dict)
        and list(raw) == ["data"]
        and isinstance(raw["data"], dict)
        and "name" in raw["data"]
    ):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(
            f"data file '{path}' must hold one top-level 'data:' mapping with a 'name' (see "
            f"experiments/data/ph2.yaml), got {found}."
        )
    return raw["data"]


def evaluation_config(
    ckpt: dict,
    *,
    data: str | Path | dict | None = None,
    overrides: Sequence[str] = (),
    source: str = "the checkpoint",
) -> Config:
    """The checkpoint's config with the evaluation's data section and overrides, validated.

    Args:
        ckpt: a loaded checkpoint (``config`` holds the resolved experiment config).
        data: ``None`` keeps the checkpoint's data section; a dict or a YAML file
            (:func:`read_data_section`) replaces it, inheriting :data:`INPUT_KEYS` it does not set.
        overrides: ``section.key=value`` assignments applied after the replacement.
        source: where the config came from, for error messages.

    Raises:
        ConfigError: an override of a :data:`FIXED_SECTIONS` section, or an invalid result.
    """
    raw = copy.deepcopy(ckpt["config"])
    if data is not None:
        section = read_data_section(data) if isinstance(data, str | Path) else dict(data)
        if "name" not in section:
            raise ConfigError(f"the data section {section} needs a 'name' (a registered dataset).")
        kept = {k: raw["data"][k] for k in INPUT_KEYS if k in raw["data"] and k not in section}
        raw["data"] = {**copy.deepcopy(section), **kept}
    for assignment in overrides:
        section_name = assignment.split("=", 1)[0].split(".", 1)[0]
        if section_name in FIXED_SECTIONS:
            raise ConfigError(
                f"override '{assignment}': an evaluation uses the network stored in the "
                f"checkpoint as it was trained, so '{section_name}' cannot change; evaluate "
                "another checkpoint (or train one with that setting). Evaluations read data.*, "
                "eval.* and train.device / num_workers / seed."
            )
        apply_override(raw, assignment)
    try:
        return validate(raw, source=f"{source} (config inside the checkpoint)")
    except ConfigError as err:
        renamed = data is None and any(a.startswith("data.name=") for a in overrides)
        if renamed:
            raise ConfigError(f"{err.args[0]} {_REPLACE_HINT}") from None
        raise


def _build_split(config: Config, split: str):
    """The evaluation dataset of ``split``; a data error is one :class:`DataError` naming it."""
    from segmentation.registry import DATASETS
    from segmentation.training.build import build_dataset

    name = config.raw["data"]["name"]
    target, _ = DATASETS.get(name)
    if "root" in DATASETS.accepted_kwargs(target) and config.raw["data"].get("root") is None:
        raise ConfigError(
            f"data '{name}' reads files but data.root is not set; give its folder with "
            "--data-root DIR (with --data-name) or --set data.root=DIR."
        )
    try:
        return build_dataset(config, split, train=False)
    except (KeyError, ValueError) as err:  # dataset constructors' argument and layout checks
        if isinstance(err, UserError):
            raise
        raise DataError(f"data '{name}', split '{split}': {err.args[0]}") from err


def _check_fits(spec: dict, dataset, data_name: str) -> None:
    """The data must give the network the input channels and classes it was built with."""
    for key in ("in_channels", "num_classes"):
        built, given = spec["kwargs"].get(key), getattr(dataset, key, None)
        if built is not None and given is not None and built != given:
            raise ConfigError(
                f"the checkpoint's {spec['name']} takes {key}={built}, but data '{data_name}' "
                f"gives {given}; choose data settings that give {key}={built} (e.g. the same "
                "data.extra_channels, or DDI with labels: lesion)."
            )


def _parsed(parse, value, what: str):
    """Run an argument parser of the evaluation modules, turning its errors into ConfigError."""
    try:
        return parse(value)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{what}: {err.args[0]}") from None


def evaluate_checkpoint(
    ckpt: str | Path | dict,
    *,
    data: str | Path | dict | None = None,
    split: str = "test",
    overrides: Sequence[str] = (),
    boundary: bool = True,
    groups: Sequence[str] = (),
    n_boot: int = 1000,
    contrast_bins: Sequence[float] = CONTRAST_BINS,
    skin_tone: bool = True,
    postprocess: str | Sequence[str] | None = None,
    robustness: str | Sequence[str] | None = None,
    robustness_images: int | None = None,
    sampling_steps: Sequence[int] = (),
    uncertainty_samples: int = 8,
    predictor=None,
    device: str | torch.device | None = None,
    command: str | None = None,
) -> dict:
    """Evaluate one checkpoint on one split.

    Args:
        ckpt: checkpoint path (``RUN/checkpoints/best.pt``) or a loaded checkpoint dict.
        data: replacement data section (dict or YAML file), see :func:`evaluation_config`.
        split: ``train``, ``val`` or ``test``.
        overrides: ``section.key=value`` (``data.root=...``, ``data.on_error=skip``, ...).
        boundary: compute HD95/ASSD.
        groups: fairness groupings (``ita``, ``fitzpatrick``, ``contrast``, ``tags``; see
            :mod:`segmentation.evaluation.fairness`), reported with bootstrap CIs of ``n_boot``
            resamples; ``contrast_bins`` are the Delta E edges of the contrast groups.
        skin_tone: add the measured skin-tone columns to the per-image rows (needed by ``groups``
            other than ``tags``/``fitzpatrick``; costs one pass over the raw images).
        postprocess: label-free post-processing steps (``"lcc,fill_holes"`` or a list); metrics
            are also reported with them under ``"postprocessed"``.
        robustness: ``corruptions`` and/or ``adversarial`` (string or list), on the first
            ``robustness_images`` images when given.
        sampling_steps: for sampling networks (SegDT), Dice and ms/image per number of steps.
        uncertainty_samples: for networks with ``predict_with_uncertainty`` (SegDT), the samples
            per image of the uncertainty report (AUROC of the per-pixel variance for wrong
            pixels, :mod:`segmentation.evaluation.uncertainty`); 0 skips it.
        predictor: ``(model, image [B, C, H, W]) -> logits [B, K, H, W]`` (TTA, sliding window);
            default: ``forward`` or ``predict``.
        device: ``None`` follows the checkpoint's ``train.device``.
        command: the command line to record in the results.

    Returns:
        ``{"metrics", "rows", "model", "dataset", "config", "device"}``: ``metrics`` is the
        ``metrics.json`` payload (``checkpoint``, ``step``, ``split``, ``network``, ``data``, the
        metric dict of :meth:`SegmentationMetrics.compute`, ``n_skipped`` and ``skipped_files``
        under ``data.on_error: skip``, and ``groups`` = ``{column: group_report}``,
        ``postprocessed``, ``robustness``, ``sampling_steps``, ``uncertainty`` when asked or
        applicable); ``rows`` has one dict
        per scored image; the rest are the objects used (the network in eval mode on ``device``).

    Raises:
        ConfigError, DataError, CheckpointError, FileNotFoundError: bad arguments, data or files.
    """
    from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
    from segmentation.evaluation.fairness import add_skin_tone, check_groupings, fairness_reports
    from segmentation.evaluation.postprocess import parse_steps
    from segmentation.evaluation.robustness import parse_kinds
    from segmentation.training.build import resolve_device

    path = None if isinstance(ckpt, dict) else str(ckpt)
    ckpt = load_checkpoint(ckpt) if path is not None else ckpt
    post_steps = _parsed(parse_steps, postprocess, "postprocess")
    if robustness is not None and not isinstance(robustness, str):
        robustness = ",".join(robustness)
    kinds = _parsed(parse_kinds, robustness, "robustness")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' unknown; choose train, val or test.")
    if len(contrast_bins) != 2:
        raise ConfigError(f"contrast_bins takes two Delta E edges, got {list(contrast_bins)}.")
    if uncertainty_samples == 1 or uncertainty_samples < 0:
        raise ConfigError(
            f"uncertainty_samples is {uncertainty_samples}; a variance needs at least 2 samples "
            "(0 skips the uncertainty report)."
        )
    config = evaluation_config(ckpt, data=data, overrides=overrides, source=path or "checkpoint")
    name = config.raw["data"]["name"]
    dataset = _build_split(config, split)
    _check_fits(ckpt["model_spec"], dataset, name)
    if groups:
        meta = dataset.load(0)[2] if hasattr(dataset, "load") else {}
        _parsed(lambda g: check_groupings(g, meta), groups, "groups")
    device = resolve_device(str(device or config.train.device))
    model = model_from_checkpoint(ckpt).to(device).eval()
    common = dict(device=device, eval_config=config.eval, collate_fn=_collate())
    metrics, rows = _evaluate(model, dataset, common, boundary, predictor, config)
    if skin_tone:  # from the raw image and GT mask, after prediction (evaluation/fairness.py)
        rows = add_skin_tone(rows, dataset, contrast_bins=tuple(contrast_bins))
    skipped = list(getattr(dataset, "skipped", []))
    payload = {
        "checkpoint": path,
        "step": ckpt.get("step"),
        "split": split,
        "network": ckpt["model_spec"]["name"],
        **({"command": command} if command else {}),
        "data": config.raw["data"],
        **metrics,
        "n_skipped": len(skipped),
        "skipped_files": skipped,
    }
    if post_steps:
        post, _ = _evaluate(model, dataset, common, boundary, predictor, config, post_steps)
        payload["postprocessed"] = {"steps": post_steps, **post}
    payload.update(_robustness(model, dataset, common, kinds, config, robustness_images))
    if sampling_steps:
        from segmentation.evaluation.evaluate import sampling_sweep

        payload["sampling_steps"] = sampling_sweep(
            model, dataset, [int(k) for k in sampling_steps], boundary=False, **common
        )
    if uncertainty_samples and hasattr(model, "predict_with_uncertainty"):
        from segmentation.evaluation.uncertainty import evaluate_uncertainty

        payload["uncertainty"] = evaluate_uncertainty(
            model, dataset, n_samples=uncertainty_samples, **common
        )
    if groups:
        payload["groups"] = fairness_reports(rows, groups, n_boot=n_boot)
    return {
        "metrics": payload,
        "rows": rows,
        "model": model,
        "dataset": dataset,
        "config": config,
        "device": device,
    }


def _collate():
    from segmentation.data import collate

    return collate


def _evaluate(model, dataset, common, boundary, predictor, config, post_steps=None):
    from segmentation.evaluation.evaluate import evaluate_model, predict_logits

    predictor = predictor or predict_logits
    if post_steps:
        from segmentation.evaluation.postprocess import postprocessed_predictor

        predictor = postprocessed_predictor(post_steps, predictor)
    return evaluate_model(
        model,
        dataset,
        boundary=boundary,
        predictor=predictor,
        num_workers=config.train.num_workers,
        **common,
    )


def _robustness(model, dataset, common, kinds, config, max_images) -> dict:
    """``{"robustness": {...}}`` for the requested kinds (empty dict for none)."""
    from segmentation.evaluation.robustness import evaluate_adversarial, evaluate_corruptions
    from segmentation.losses import BCEDiceLoss

    common = {**common, "seed": config.train.seed, "max_images": max_images}
    out = {}
    if "corruptions" in kinds:
        image_size = config.raw["data"].get("image_size")
        out["corruptions"] = evaluate_corruptions(model, dataset, image_size=image_size, **common)
    if "adversarial" in kinds:
        # the attacked loss is Dice + BCE whatever the run trained with (Paschali et al. 2018)
        out["adversarial"] = evaluate_adversarial(model, dataset, loss_fn=BCEDiceLoss(), **common)
    return {"robustness": out} if out else {}
