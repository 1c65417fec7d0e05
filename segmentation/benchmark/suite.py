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

from segmentation.training.trainer import Hook

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITES = {
    "ci": "experiments/ci",
    "isic2018": "experiments/isic2018",
    "isic2017": "experiments/isic2017",
    "ph2": "experiments/ph2",
}
ROW_ORDER = (
    "unet", "smp_unet", "swin_unet", "att_swinunet_none", "att_swinunet_cross",
    "att_swinunet_cross_spatial", "mcanet", "iscf", "transdae", "segdt", "sam_adapter",
)  # fmt: skip
HARD_TAGS = ("low_contrast", "heavy_hair", "tiny")
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


def suite_configs(suite: str, only: list[str] | None = None) -> dict[str, Path]:
    """``{row name: yaml path}`` of a suite (file stem = row name), optionally a subset."""
    if suite not in SUITES:
        raise KeyError(f"unknown suite '{suite}'; accepted: {', '.join(SUITES)}.")
    found = sorted((REPO_ROOT / SUITES[suite]).glob("*.yaml"))
    # table order: the network families from classic to prompted, then anything added later
    rank = {name: i for i, name in enumerate(ROW_ORDER)}
    paths = {p.stem: p for p in sorted(found, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))}
    for name in only or ():
        if name not in paths:
            raise KeyError(
                f"--only {name}: no {SUITES[suite]}/{name}.yaml; rows: {', '.join(paths)}."
            )
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


def count_gmac(spec: dict, size: int) -> float | None:
    """GMAC of one forward (or one ``predict`` call) at ``1 x C x size x size``.

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of matmul,
    convolution and attention ops; GMAC = total / 2 / 1e9. Networks taking ``attention_backend``
    are built with the ``reference`` path (plain matmuls, all counted). ``None`` when the network
    does not run at that size.
    """
    from torch.utils.flop_counter import FlopCounterMode

    import networks
    from segmentation.evaluation.evaluate import predict_logits

    target, _ = networks.NETWORKS.get(spec["name"])
    kwargs = dict(spec["kwargs"])
    if "attention_backend" in networks.NETWORKS.accepted_kwargs(target):
        kwargs["attention_backend"] = "reference"
    model = networks.build_network(spec["name"], **kwargs).eval()
    image = torch.zeros(1, kwargs["in_channels"], size, size)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            predict_logits(model, image)
    except (ValueError, RuntimeError, AssertionError):
        return None
    return counter.get_total_flops() / 2 / 1e9


class _TimingHook(Hook):
    """Wall and process-CPU time of the training loop up to the step before the final validation."""

    def __init__(self) -> None:
        self.start = self.start_cpu = None
        self.images, self.seconds, self.cpu_seconds = 0, math.nan, math.nan

    def on_fit_start(self, trainer) -> None:
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, trainer, logs) -> None:
        # the last step also ran the validation; with one step only, it is all there is
        if trainer.step == trainer.cfg.steps - 1 or trainer.cfg.steps == 1:
            self.images = trainer.step * trainer.cfg.batch_size
            self.seconds = time.perf_counter() - self.start
            self.cpu_seconds = time.process_time() - self.start_cpu


def _group_stats(rows: list[dict], synthetic: bool) -> dict:
    """Worst skin-tone group Dice and gap, and Dice on the hard tags, from per-image rows."""
    from segmentation.data.color import ITA_BINS
    from segmentation.evaluation.groups import group_report

    column = "ita_group" if synthetic else "ita_chardon6"
    rows = [{**r, column: None} if r.get(column) == "unknown" else r for r in rows]
    report = group_report(
        rows, column, "dice", n_boot=1000, order=[n for _, n in ITA_BINS["chardon6"]]
    )
    out = {
        "group_column": column,
        "groups": {g: {"n": s["n"], "dice": s["mean"]} for g, s in report["groups"].items()},
        "worst_group": report["worst_group"],
        "worst_group_dice": report["worst_value"],
        "group_gap": report["gap"],
    }
    for tag in HARD_TAGS:
        values = [r["dice"] for r in rows if r.get(f"tag_{tag}")]
        out[f"dice_{tag}"] = sum(values) / len(values) if values else None
        out[f"n_{tag}"] = len(values)
    return out


def _inference_images_s(model, dataset, batch: int = 8, repeat: int = 3) -> dict:
    from segmentation.benchmark.timing import time_callable
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import predict_logits

    image = collate([dataset[i] for i in range(min(batch, len(dataset)))])["image"]
    model.eval()
    with torch.inference_mode():
        t = time_callable(
            lambda: predict_logits(model, image), device=torch.device("cpu"), warmup=1,
            repeat=repeat,
        )  # fmt: skip
    n = image.shape[0]
    return {
        "infer_images_s": n / t["median_ms"] * 1e3,
        "infer_cpu_images_s": n / t["cpu_median_ms"] * 1e3,
    }


def run_row(name: str, config, run_dir: Path, *, log=print) -> dict:
    """Train one configuration into ``run_dir``, evaluate ``best.pt`` once on the test split."""
    from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model
    from segmentation.training.build import build_dataset, run_training

    start = time.perf_counter()
    timing = _TimingHook()
    val = run_training(config, run_dir, extra_hooks=[timing])
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    spec = ckpt["model_spec"]
    test_set = build_dataset(config, "test")
    metrics, rows = evaluate_model(
        model, test_set, device=torch.device("cpu"), eval_config=config.eval, boundary=True,
        collate_fn=collate,
    )  # fmt: skip
    synthetic = config.raw["data"]["name"] == "synthetic"
    if not synthetic:
        from segmentation.evaluation.fairness import add_skin_tone

        rows = add_skin_tone(rows, test_set)
    net = model
    oracle = getattr(net, "prompt_source", None) == "oracle"
    row = {
        "name": name,
        "label": f"{name} (oracle prompt)" if oracle else name,
        "network": spec["name"],
        "model_kwargs": {k: v for k, v in spec["kwargs"].items()},
        "prompt": metrics.get("prompt"),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gmac_128": count_gmac(spec, 128),
        "gmac_224": count_gmac(spec, 224),
        "measured_call": "predict" if hasattr(model, "predict") else "forward",
        "n_test": metrics["n_images"],
        "val_dice": val.get("per_image", {}).get("dice"),
        "step": ckpt.get("step"),
        **{k: metrics["per_image"][k] for k in ("dice", "iou", "thresholded_jaccard", "hd95")},
        "hd95_excluded": metrics["boundary_excluded"],
        "global_dice": metrics["global"]["dice"],
        **_group_stats(rows, synthetic),
        "train_images_s": timing.images / timing.seconds if timing.images else None,
        "train_cpu_images_s": timing.images / timing.cpu_seconds if timing.images else None,
        **_inference_images_s(model, test_set),
    }
    row["wall_s"] = time.perf_counter() - start
    log(
        f"{name}: dice {row['dice']:.4f}, hd95 {row['hd95']:.2f} px, worst group "
        f"{row['worst_group']} {row['worst_group_dice']:.4f}; {row['wall_s']:.0f} s"
    )
    return row


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
                    f"{name}: {metric} {_fmt(row.get(metric))} vs reference "
                    f"{_fmt(ref.get(metric))} (tolerance +-{tol:g})"
                )
        timings = ", ".join(
            f"{key} {_fmt(row.get(key))} (ref {_fmt(ref.get(key))})" for key in TIMINGS
        )
        report.append(f"{name}: {timings} [timings are reported, not checked]")
    return failures, report


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def cli(args) -> int:
    """``tools/benchmark.py --suite``: run, write ``--json``/README, ``--check``; the exit code."""
    import json

    from segmentation.benchmark.readme import write_readme

    reference = None
    if args.check:  # read (and fail on) the reference before an hour of training
        reference = json.loads(Path(args.check).read_text())
    only = args.only.split(",") if args.only else None
    try:  # argument errors as one line, before any training
        suite_configs(args.suite, only)
    except KeyError as err:
        raise SystemExit(f"error: {err.args[0]}") from None
    if args.suite != "ci" and not args.data_root:
        raise SystemExit(f"error: --suite {args.suite} reads real data; pass --data-root DIR.")
    result = run_suite(
        args.suite,
        only=only,
        steps=args.steps,
        threads=args.threads,
        data_root=args.data_root,
        work_dir=args.work_dir,
    )
    for row in result["rows"].values():
        print(
            f"{row['label']:<28} dice {_fmt(row['dice'])} iou {_fmt(row['iou'])} "
            f"thrJ {_fmt(row['thresholded_jaccard'])} hd95 {_fmt(row['hd95'])} "
            f"global {_fmt(row['global_dice'])} worst {row['worst_group']} "
            f"{_fmt(row['worst_group_dice'])} | train {_fmt(row['train_images_s'])} img/s, "
            f"infer {_fmt(row['infer_images_s'])} img/s, {row['wall_s']:.0f} s"
        )
    print(f"suite '{args.suite}': {result['protocol']['wall_s'] / 60:.1f} min")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.write_readme:
        changed = write_readme(REPO_ROOT / "README.md", result)
        print("README.md benchmark table " + ("updated" if changed else "unchanged"))
    if reference is None:
        return 0
    failures, report = check(reference, result, list(suite_configs(args.suite)))
    print("\n".join(report))
    for message in failures:
        print(f"CHECK FAILED: {message}")
    print(f"check against {args.check}: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0
