"""Benchmark suites: train every configuration of a suite, test it once, compare with a reference.

``tools/benchmark.py --suite ci`` is the CLI. The ``ci`` suite trains each ``experiments/ci/*.yaml``
(one table row per file) on the synthetic data with the same steps, batch, seed and thread count,
evaluates ``best.pt`` once on the synthetic test split with boundary metrics, and records quality,
cost (parameters, GMAC) and speed. ``check`` compares a fresh run with the committed
``benchmarks/ci.json``: quality metrics must stay within the stated tolerances, the set of rows must
match the files in ``experiments/ci/``; timings are reported, never asserted.

The real-data suites (``isic2018``, ``isic2017``, ``ph2``) run the shipped experiment files of that
dataset the same way, with ``data.root`` the only setting; skin-tone groups then come from the
measured ITA (chardon6 bins) instead of the generator's true group, and there are no difficulty
tags. The README table is rendered by :mod:`segmentation.benchmark.readme`.
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from segmentation.benchmark.row import HARD_TAGS, run_row
from segmentation.reporting.tables import format_number

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITES = {
    "ci": "experiments/ci",
    "isic2018": "experiments/isic2018",
    "isic2017": "experiments/isic2017",
    "ph2": "experiments/ph2",
    "synthetic": "experiments/synthetic",
}
ROW_ORDER = (
    "unet", "smp_unet", "nnunet2d", "swin_unet", "att_swinunet_none", "att_swinunet_cross",
    "att_swinunet_spatial", "att_swinunet_cross_spatial", "mcanet", "iscf", "iscf_off",
    "transdae", "segdt", "sam_adapter", "medsam_ca", "sam2_adapter", "sam3",
)  # fmt: skip
# Absolute tolerances of --check, per quality metric. Whole-test-set overlap metrics get 0.02;
# thresholded Jaccard jumps by a whole IoU when an image crosses 0.65, so 0.03; the subset metrics
# (worst skin-tone group, gap, hard tags) average 25-60 images each, so 0.04; HD95 in pixels.
TOLERANCES = {
    "dice": 0.02,
    "iou": 0.02,
    "global_dice": 0.02,
    "thresholded_jaccard": 0.03,
    "worst_group_dice": 0.04,
    "group_gap": 0.04,
    **{f"dice_{tag}": 0.04 for tag in HARD_TAGS},
    "hd95": 3.0,
}
QUALITY = tuple(TOLERANCES)
TIMINGS = ("train_images_s", "infer_images_s", "wall_s")
# Settings that must agree between the reference and a re-run for the comparison to mean anything.
PROTOCOL_KEYS = ("steps", "batch_size", "image_size", "n_test", "seed")
DEFAULT_THREADS = 2  # tools/benchmark.py --threads without the flag


def suite_configs(
    suite: str, only: list[str] | None = None, folder: Path | None = None
) -> dict[str, Path]:
    """``{row name: yaml path}`` of a suite (file stem = row name), optionally a subset;
    ``folder`` replaces the suite's ``experiments/`` folder (tests, ``--configs``)."""
    if suite not in SUITES:
        raise KeyError(f"unknown suite '{suite}'; accepted: {', '.join(SUITES)}.")
    found = sorted(Path(folder or REPO_ROOT / SUITES[suite]).glob("*.yaml"))
    # table order: the network families from classic to prompted, then anything added later
    rank = {name: i for i, name in enumerate(ROW_ORDER)}
    paths = {p.stem: p for p in sorted(found, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))}
    for name in only or ():
        if name not in paths:
            where = folder or SUITES[suite]
            raise KeyError(f"--only {name}: no {where}/{name}.yaml; rows: {', '.join(paths)}.")
    return {n: p for n, p in paths.items() if not only or n in only}


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def protocol(configs: dict, threads: int, suite: str) -> dict:
    """The settings every row shares (checked to agree), environment and definitions."""
    from segmentation.evaluation.metrics import SegmentationMetrics

    first = next(iter(configs.values()))
    shared = {
        "steps": first.train.steps,
        "batch_size": first.train.batch_size,
        "image_size": first.raw["data"].get("image_size"),
        "n_test": first.raw["data"].get("n_test"),
        "seed": first.train.seed,
    }
    for name, cfg in configs.items():
        mine = {
            "steps": cfg.train.steps,
            "batch_size": cfg.train.batch_size,
            "image_size": cfg.raw["data"].get("image_size"),
            "n_test": cfg.raw["data"].get("n_test"),
            "seed": cfg.train.seed,
        }
        if mine != shared and suite == "ci":  # real-data files keep their papers' recipes
            raise ValueError(
                f"suite '{suite}': row '{name}' has {mine} but '{next(iter(configs))}' has "
                f"{shared}; every row of a suite must share steps, batch, size, test split, seed."
            )
    data = first.raw["data"]
    definitions = SegmentationMetrics(boundary=True).definitions()
    definitions.update(
        {
            "global_dice": "micro Dice: TP/FP/FN pooled over all test pixels",
            "worst_group_dice": "lowest per-image mean Dice among the chardon6 skin-tone groups "
            + ("(the generator's true ITA)" if data["name"] == "synthetic" else "(measured ITA)"),
            "group_gap": "max - min of the group mean Dice",
            "dice_<tag>": "per-image mean Dice over the test images carrying the generator tag",
            "gmac": "FlopCounterMode total / 2 / 1e9, batch 1, reference attention; networks "
            "with predict() (SegDT, SAM adapters): one predict call (SegDT: K sampling steps and "
            "the mask decoder)",
            "train_images_s": "training loop (data + step) up to the step before the final "
            "validation, wall clock",
            "infer_images_s": "predict on a batch of 8 test images, median of 3, wall clock",
            "selection": "best.pt on the validation split; train.eval_every = steps, so the "
            "last step",
        }
    )
    return {
        "suite": suite,
        "configs": SUITES[suite] + "/*.yaml",
        **shared,
        "data": {k: v for k, v in data.items() if k != "root"},
        "seeds": {
            "train": first.train.seed,  # initialisation, data order, augmentation
            "data": data.get("seed", 0),  # the synthetic generator (every image)
            "sampling": "model.sample_seed (SegDT's noise, default 0)",
        },
        "threads": threads,
        "deterministic": first.train.deterministic,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "metric_definitions": definitions,
        "tolerances": dict(TOLERANCES),
    }


def run_suite(
    suite: str = "ci",
    *,
    only: list[str] | None = None,
    steps: int | None = None,
    threads: int = 2,
    data_root: str | None = None,
    work_dir: str | Path | None = None,
    log=print,
) -> dict:
    """Run every row of ``suite``; return ``{"protocol": ..., "rows": {name: row}}``."""
    from segmentation.config import load_config

    torch.set_num_threads(threads)
    overrides = []
    if steps is not None:
        overrides += [f"train.{k}={steps}" for k in ("steps", "eval_every", "checkpoint_every")]
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    elif suite != "ci":
        raise ValueError(f"suite '{suite}' reads real data: pass its root (--data-root PATH).")
    paths = suite_configs(suite, only)
    configs = {name: load_config(path, overrides) for name, path in paths.items()}
    result = {"protocol": protocol(configs, threads, suite), "rows": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"dermseg_{suite}_") as tmp:
        base = Path(work_dir) if work_dir is not None else Path(tmp)
        for name, config in configs.items():
            result["rows"][name] = run_row(name, config, base / name, log=log)
    result["protocol"]["wall_s"] = time.perf_counter() - start
    return result


def merge_rows(old: dict, new: dict) -> dict:
    """``old`` (a results file) with the rows of ``new`` (a partial re-run) replacing its own.

    The protocol must agree on ``PROTOCOL_KEYS``, the thread count and the suite; the merged
    protocol is the new run's, with ``wall_s`` the sum of the rows' wall times (what a full run
    would have taken). Raises ``ValueError`` naming the first disagreeing setting.
    """
    old_proto, new_proto = old.get("protocol", {}), new["protocol"]
    for key in (*PROTOCOL_KEYS, "threads", "suite"):
        if old_proto.get(key) != new_proto.get(key):
            raise ValueError(
                f"its {key} is {old_proto.get(key)!r} but this run's is {new_proto.get(key)!r}; "
                "re-run every row (drop --only) or write to another --json."
            )
    rows = {**old.get("rows", {}), **new["rows"]}
    protocol = {**new_proto, "wall_s": sum(row["wall_s"] for row in rows.values())}
    return {**old, "protocol": protocol, "rows": rows}


def _close(a, b, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol + 1e-12


def check(reference: dict, current: dict, registered: list[str]) -> tuple[list[str], list[str]]:
    """Compare a re-run with the reference results.

    Args:
        reference: the committed results (``benchmarks/ci.json``).
        current: the re-run (possibly a subset of the rows).
        registered: row names that have a configuration file (``experiments/ci/*.yaml``).

    Returns:
        ``(failures, report)``: one message per failure (a quality metric beyond its tolerance, a
        row missing on either side, a protocol mismatch), and report lines with the timings.
    """
    tolerances = {**TOLERANCES, **reference.get("protocol", {}).get("tolerances", {})}
    failures, report = [], []
    ref_rows, cur_rows = reference.get("rows", {}), current.get("rows", {})
    for name in sorted(set(registered) - set(ref_rows)):
        failures.append(
            f"{name}: registered for CI (experiments/ci/{name}.yaml) but missing from the "
            "reference; regenerate it with --suite ci --json benchmarks/ci.json."
        )
    for name in sorted(set(ref_rows) - set(registered)):
        failures.append(
            f"{name}: in the reference but no experiments/ci/{name}.yaml registers it; "
            "restore the file or regenerate the reference."
        )
    ref_proto, cur_proto = reference.get("protocol", {}), current.get("protocol", {})
    for key in PROTOCOL_KEYS:
        if key in ref_proto and key in cur_proto and ref_proto[key] != cur_proto[key]:
            failures.append(
                f"protocol: {key} = {cur_proto[key]} in this run but {ref_proto[key]} in the "
                "reference; compare runs with the same settings (drop --steps)."
            )
    for key in ("threads", "torch", "cpu"):
        if ref_proto.get(key) != cur_proto.get(key):
            report.append(
                f"note: {key} differs ({cur_proto.get(key)} here, {ref_proto.get(key)} in the "
                "reference); small numerical drift is expected."
            )
    for name, row in cur_rows.items():
        if name not in ref_rows:
            continue
        ref = ref_rows[name]
        for metric in QUALITY:
            tol = tolerances[metric]
            if not _close(row.get(metric), ref.get(metric), tol):
                failures.append(
                    f"{name}: {metric} {fmt(row.get(metric))} vs reference "
                    f"{fmt(ref.get(metric))} (tolerance +-{tol:g})"
                )
        timings = ", ".join(
            f"{key} {fmt(row.get(key))} (ref {fmt(ref.get(key))})" for key in TIMINGS
        )
        report.append(f"{name}: {timings} [timings are reported, not checked]")
    return failures, report


def fmt(value) -> str:
    """A number as the suites print it: 4 decimals, ``-`` when absent, ``nan`` when NaN."""
    return "-" if value is None else format_number(value, ".4f", missing="nan")
