"""One benchmark row: train a configuration, test ``best.pt`` once, record quality and cost.

:func:`run_row` is shared by every suite (``segmentation.benchmark.suite`` runs the one-seed suites
in process; ``segmentation.benchmark.main_suite`` runs each seed of the main suite in a fresh
process with ``details=True``). Cost: parameters, GMAC of one prediction (:func:`count_gmac`) and of
one training step (:func:`count_train_gmac`), training and inference images/s, wall time, peak
memory.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import resource
import time
from pathlib import Path

import torch

from segmentation.training.hooks import checkpoint_due
from segmentation.training.trainer import Hook

HARD_TAGS = ("low_contrast", "heavy_hair", "tiny")
# Sampling networks (a ``predict`` taking ``steps``, e.g. SegDT) are also tested at these K.
SAMPLING_STEPS = (1, 4, 8)


def _reference_model(spec: dict) -> torch.nn.Module:
    """The network of ``spec``, built with the ``reference`` attention path where it has one."""
    import networks

    target, _ = networks.NETWORKS.get(spec["name"])
    kwargs = dict(spec["kwargs"])
    if "attention_backend" in networks.NETWORKS.accepted_kwargs(target):
        kwargs["attention_backend"] = "reference"
    return networks.build_network(spec["name"], **kwargs)


def count_gmac(spec: dict, size: int) -> float | None:
    """GMAC of one forward (or one ``predict`` call) at ``1 x C x size x size``.

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of matmul,
    convolution and attention ops; GMAC = total / 2 / 1e9. Networks taking ``attention_backend``
    are built with the ``reference`` path (plain matmuls, all counted). ``None`` when the network
    does not run at that size.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from segmentation.evaluation.evaluate import predict_logits

    model = _reference_model(spec).eval()
    image = torch.zeros(1, spec["kwargs"]["in_channels"], size, size)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            predict_logits(model, image)
    except (ValueError, RuntimeError, AssertionError):
        return None
    return counter.get_total_flops() / 2 / 1e9


def train_gmac_per_image(network: str, kwargs: dict, config) -> float | None:
    """:func:`count_train_gmac` of a run's network (``network``, ``kwargs`` as recorded, e.g.
    after planning) on two images of ``config``'s test split."""
    from segmentation.data import collate
    from segmentation.training.build import build_dataset

    test_set = build_dataset(config, "test")
    sample = collate([test_set[i] for i in range(min(2, len(test_set)))])
    return count_train_gmac({"name": network, "kwargs": kwargs}, config, sample)


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:  # fmt: skip
    """FLOPs of ``aten.convolution_backward``: the gradient of the input and the gradient of the
    weight each cost the multiply-accumulates of the forward convolution (``w_shape`` already holds
    ``in_channels / groups``). Replaces torch 2.14's formula, which does not divide the weight
    gradient of a grouped convolution by ``groups`` (it counts that gradient ``groups`` times too
    high; the test checks forward + backward = 3x forward for groups 1, 4 and 64)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_train_gmac(spec: dict, config, batch: dict) -> float | None:
    """GMAC of one training step (forward, loss and backward) per image of ``batch``.

    Counted like :func:`count_gmac` (reference attention) on ``TrainingObjective`` in training
    mode, so the backward pass, frozen parameters (no weight gradients) and objectives other than
    "logits -> loss" (SegDT's velocity loss, prompted networks) count as they run; convolution
    backward with :func:`_conv_backward_flop`. ``None`` when the step does not run on CPU at this
    size.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from segmentation.training.build import build_loss
    from segmentation.training.trainer import TrainingObjective

    objective = TrainingObjective(_reference_model(spec), build_loss(config))
    backward = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    counter = FlopCounterMode(display=False, custom_mapping=backward)
    try:
        with counter:
            loss, _ = objective.train()(batch)
            loss.backward()
    except (ValueError, RuntimeError, AssertionError):
        return None
    return counter.get_total_flops() / 2 / 1e9 / batch["image"].shape[0]


PROGRESS_FILE = "progress.json"  # a run's record at its newest checkpoint (resumable runs)


class _TimingHook(Hook):
    """Wall and process-CPU time of the training loop up to the step before the final validation;
    the validation per-image Dice at every evaluation (``curve``: ``[[step, dice], ...]``).

    With ``progress=(path, identity)`` it also writes, after every checkpoint (the checkpoint hook
    runs first), a record of the run so far to ``path``: ``identity`` (what the run is, for the
    caller to compare), the checkpoint's step, the curve, the times up to that step and the
    ``[start, end]`` epoch intervals the run has trained in. A run resumed from that checkpoint
    passes the record as ``prior`` and continues the curve, the times and the intervals; work done
    after the checkpoint by the stopped run is not counted (it is redone).
    """

    def __init__(self, prior: dict | None = None, progress: tuple[Path, dict] | None = None,
                 started_at: float | None = None) -> None:  # fmt: skip
        prior = prior or {}
        self.start = self.start_cpu = None
        measured = prior.get("measured") or (0, None, None)  # None: not measured yet
        self.images = measured[0]
        self.seconds, self.cpu_seconds = (math.nan if x is None else x for x in measured[1:])
        self.curve: list[list[float]] = [list(point) for point in prior.get("curve", [])]
        self.prior_s = prior.get("train_s", 0.0)
        self.prior_cpu_s = prior.get("train_cpu_s", 0.0)
        self.prior_wall_s = prior.get("wall_s", 0.0)  # run_row's wall time up to the checkpoint
        self.spans = [list(span) for span in prior.get("spans", [])]
        self.resumed_from = [*prior.get("resumed_from", []), *([prior["step"]] if prior else [])]
        self.progress = progress
        self.started_at = time.time() if started_at is None else started_at
        self.created = time.perf_counter()

    def on_fit_start(self, trainer) -> None:
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def on_eval_end(self, trainer, metrics, improved) -> None:
        self.curve.append([trainer.step, metrics.get("per_image", {}).get("dice")])

    def on_step_end(self, trainer, logs) -> None:
        # the last step also ran the validation; with one step only, it is all there is
        if trainer.step == trainer.cfg.steps - 1 or trainer.cfg.steps == 1:
            self.images = trainer.step * trainer.cfg.batch_size
            self.seconds = self.prior_s + time.perf_counter() - self.start
            self.cpu_seconds = self.prior_cpu_s + time.process_time() - self.start_cpu
        if self.progress is not None and checkpoint_due(trainer):  # written just before
            self.write_progress(trainer.step)

    def wall_s(self) -> float:
        """``run_row``'s wall time so far, earlier runs of a resumed run included."""
        return self.prior_wall_s + time.perf_counter() - self.created

    def write_progress(self, step: int) -> None:
        path, identity = self.progress
        times = (self.seconds, self.cpu_seconds)  # JSON has no NaN: None until measured
        record = {
            "run": identity,
            "step": step,
            "curve": self.curve,
            "train_s": self.prior_s + time.perf_counter() - self.start,
            "train_cpu_s": self.prior_cpu_s + time.process_time() - self.start_cpu,
            "wall_s": self.wall_s(),
            "spans": [*self.spans, [self.started_at, time.time()]],
            "resumed_from": self.resumed_from,
            "measured": [self.images, *(None if math.isnan(x) else x for x in times)],
        }
        write_json_atomically(path, record)


def write_json_atomically(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` through a temp file and a rename: a reader (or a killed
    writer) never leaves a partial file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def progress_record(run_dir: Path, identity: dict) -> dict | None:
    """``run_dir/progress.json`` when it is the record of the run ``identity``, else None."""
    try:
        record = json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("run") != identity or "step" not in record:
        return None
    return record


def read_progress(run_dir: Path, identity: dict) -> tuple[Path, dict] | None:
    """Where a stopped run of ``identity`` can continue: ``(checkpoint, record)`` when
    ``run_dir/progress.json`` is that run's and a complete checkpoint of its step exists, else
    None (no record, another run's, unreadable, or its checkpoint is missing or truncated)."""
    from segmentation.checkpoint import load_checkpoint
    from segmentation.errors import CheckpointError

    record = progress_record(run_dir, identity)
    if record is None:
        return None
    folder = Path(run_dir) / "checkpoints"
    for path in (folder / f"step_{record['step']:08d}.pt", folder / "last.pt"):
        try:
            if path.is_file() and load_checkpoint(path)["step"] == record["step"]:
                return path, record
        except CheckpointError:
            continue
    return None


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


def _inference_images_s(model, dataset, device, batch: int = 8, repeat: int = 3) -> dict:
    from segmentation.benchmark.timing import time_callable
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import predict_logits

    image = collate([dataset[i] for i in range(min(batch, len(dataset)))])["image"].to(device)
    model.eval()
    with torch.inference_mode():
        t = time_callable(
            lambda: predict_logits(model, image), device=device, warmup=1, repeat=repeat
        )
    n = image.shape[0]
    return {
        "infer_images_s": n / t["median_ms"] * 1e3,
        "infer_cpu_images_s": n / t["cpu_median_ms"] * 1e3,
    }


def _test_numbers(metrics: dict, rows: list[dict], synthetic: bool, details: bool) -> dict:
    """The quality numbers of one test evaluation (``details``: + per-image Dice and the count of
    empty predictions on images with a lesion)."""
    out = {
        **{k: metrics["per_image"][k] for k in ("dice", "iou", "thresholded_jaccard", "hd95")},
        "hd95_excluded": metrics["boundary_excluded"],
        "global_dice": metrics["global"]["dice"],
        **_group_stats(rows, synthetic),
    }
    if details:
        out["per_image_dice"] = [round(float(r["dice"]), 6) for r in rows]
        out["n_empty_pred_on_lesion"] = sum(
            1 for r in rows if r["tp"] + r["fp"] == 0 and r["tp"] + r["fn"] > 0
        )
    return out


def run_row(
    name: str,
    config,
    run_dir: Path,
    *,
    log=print,
    gmac_sizes=(128, 224),
    details: bool = False,
    progress: tuple[Path, dict] | None = None,
    resume: tuple[Path, dict] | None = None,
    started_at: float | None = None,
) -> dict:
    """Train one configuration into ``run_dir``, evaluate ``best.pt`` once on the test split.

    Args:
        name: the row name.
        config: its validated config.
        run_dir: the run folder (checkpoints, ``metrics.json``).
        log: progress printer.
        gmac_sizes: image sides at which to count the GMAC of one prediction.
        details: also record the per-image test Dice (``per_image_dice``, in the order of
            ``test_ids``), the count of empty predictions on images with a lesion, the test
            numbers at every sampling step count of :data:`SAMPLING_STEPS` for networks whose
            ``predict`` takes ``steps`` (``sampling``),
            and the process's peak memory (meaningful in a fresh process, as the main suite runs).
        progress: ``(path, identity)``: keep a record of the run at every checkpoint in ``path``
            (see ``_TimingHook``), so that a stopped run can be resumed.
        resume: ``(checkpoint, record)`` from :func:`read_progress`: continue that stopped run
            (deterministic runs end with the weights of an uninterrupted one). The curve and the
            times include the earlier runs; with ``details``, ``spans`` (the epoch intervals it
            trained in, earlier runs included) and ``resumed_from`` (the steps it continued from).
        started_at: epoch seconds this run started (default: now), the start of its last span.
    """
    from networks.common import count_parameters
    from segmentation.checkpoint import load_checkpoint, model_from_checkpoint, unwrap
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model
    from segmentation.training.build import build_dataset, resolve_device, run_training

    timing = _TimingHook(resume[1] if resume else None, progress, started_at)
    ckpt = load_checkpoint(resume[0]) if resume else None
    if ckpt is not None:
        log(f"{name}: resuming from {resume[0]} (step {ckpt['step']})")
    val = run_training(config, run_dir, resume=ckpt, extra_hooks=[timing])
    device = resolve_device(config.train.device)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model = model_from_checkpoint(ckpt).to(device).eval()
    spec = ckpt["model_spec"]
    test_set = build_dataset(config, "test")
    synthetic = config.raw["data"]["name"] == "synthetic"

    def test(predictor=None) -> dict:
        extra = {"predictor": predictor} if predictor is not None else {}
        metrics, rows = evaluate_model(
            model, test_set, device=device, eval_config=config.eval, boundary=True,
            collate_fn=collate, **extra,
        )  # fmt: skip
        if not synthetic:
            from segmentation.evaluation.fairness import add_skin_tone

            rows = add_skin_tone(rows, test_set)
        return metrics, rows

    metrics, rows = test()
    oracle = getattr(model, "prompt_source", None) == "oracle"
    counts = count_parameters(model)
    row = {
        "name": name,
        "label": f"{name} (oracle prompt)" if oracle else name,
        "network": spec["name"],
        "model_kwargs": {k: v for k, v in spec["kwargs"].items()},
        "prompt": metrics.get("prompt"),
        "params": counts["total"],
        "trainable_params": counts["trainable"],
        **{f"gmac_{s}": count_gmac(spec, s) for s in gmac_sizes},
        "measured_call": "predict" if hasattr(model, "predict") else "forward",
        "n_test": metrics["n_images"],
        "val_dice": val.get("per_image", {}).get("dice"),
        "val_curve": timing.curve,
        "step": ckpt.get("step"),
        **_test_numbers(metrics, rows, synthetic, details),
        "train_images_s": timing.images / timing.seconds if timing.images else None,
        "train_cpu_images_s": timing.images / timing.cpu_seconds if timing.images else None,
        "train_wall_s": timing.seconds,
        **_inference_images_s(model, test_set, device),
    }
    if details:
        row["test_ids"] = [r["id"] for r in rows]
        steps_arg = inspect.signature(getattr(model, "predict", lambda: None)).parameters
        if "steps" in steps_arg:
            row["sample_steps"] = getattr(model, "sample_steps", None)  # K of the main numbers
            row["sampling"] = {}
            for k in SAMPLING_STEPS:

                def predict_k(m, image, k=k):
                    return unwrap(m).predict(image, steps=k)

                row["sampling"][str(k)] = _test_numbers(*test(predict_k), synthetic, True)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cuda = device.type == "cuda"
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    row["wall_s"] = timing.wall_s()
    if details:  # the main suite's runs: when they trained (each sitting of a resumed run)
        row["spans"] = [*timing.spans, [timing.started_at, time.time()]]
        row["resumed_from"] = timing.resumed_from
    log(
        f"{name}: dice {row['dice']:.4f}, hd95 {row['hd95']:.2f} px, worst group "
        f"{row['worst_group']} {row['worst_group_dice']:.4f}; {row['wall_s']:.0f} s"
    )
    return row
