"""Run a network over an evaluation split and compute the protocol's metrics (docs/protocol.md).

Shared by the Trainer's validation and ``tools/evaluate.py`` (through
:func:`segmentation.evaluation.checkpoint_eval.evaluate_checkpoint`) so both measure the same way:
networks with a ``predict`` method (generative, prompted) are evaluated through it, others through
``forward``; logits are binarised by the metric code (``sigmoid > 0.5``), never post-processed
with the ground truth.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from segmentation.checkpoint import unwrap
from segmentation.data.loader import eval_loader
from segmentation.distributed import SINGLE_PROCESS, DistInfo, gather_states, shard
from segmentation.evaluation.metrics import SegmentationMetrics


def predict_logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` at the input size, through ``predict`` when the network defines
    it."""
    net = unwrap(model)
    logits = net.predict(image) if hasattr(net, "predict") else model(image)
    if logits.shape[-2:] != image.shape[-2:]:
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset,
    *,
    device: torch.device,
    eval_config,
    boundary: bool | None = None,
    collate_fn=None,
    num_workers: int = 0,
    autocast=nullcontext,
    predictor=predict_logits,
    dist_info: DistInfo = SINGLE_PROCESS,
) -> tuple[dict, list[dict]]:
    """Evaluate ``model`` on every image of ``dataset``.

    Args:
        model: the network (any wrapper).
        dataset: an evaluation split (sample dicts with ``image``, ``mask``, ``id``, ``meta``).
        device: where to run.
        eval_config: :class:`~segmentation.config.EvalConfig` (batch size, empty policy, boundary
            definition).
        boundary: compute HD95/ASSD; ``None`` follows ``eval_config.boundary``.
        collate_fn, num_workers: loader settings.
        autocast: context factory used around the forward pass.
        predictor: ``(model, image) -> logits``; replaceable (test-time augmentation, sliding
            window). Prompted networks whose ``prompt_source`` is ``"oracle"`` are instead given
            the ground-truth mask as prompt, and the result is labelled with their
            ``prompt_description`` under ``"prompt"`` (never comparable with automatic methods).
        dist_info: under DDP each rank evaluates a contiguous shard and the metric states are
            gathered exactly (integer counts and rows concatenated in rank order).

    Returns:
        ``(metrics, rows)``: the metric dict (``per_image``, ``global``, ``n_images``, ...) and one
        row per image.
    """
    was_training = model.training
    model.eval()
    meter = SegmentationMetrics(
        empty=eval_config.empty,
        boundary=eval_config.boundary if boundary is None else boundary,
        hd95_definition=eval_config.boundary_definition,
        assd_definition=eval_config.boundary_definition,
    )
    loader = eval_loader(
        shard(dataset, dist_info),
        batch_size=eval_config.batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    net = unwrap(model)
    oracle = getattr(net, "prompt_source", None) == "oracle"
    reset_state = getattr(net, "reset_state", lambda: None)  # e.g. the SAM 2 memory bank
    reset_state()  # every pass starts empty and fills the state in evaluation order
    for batch in loader:
        image = batch["image"].to(device)
        with autocast():
            if oracle:
                logits = net.predict(image, prompt_mask=batch["mask"].to(device))
            else:
                logits = predictor(model, image)
        meter.update(logits.float().cpu(), batch["mask"], ids=batch["id"], meta=batch["meta"])
    reset_state()  # and leaves nothing behind for training or the next pass
    model.train(was_training)
    if dist_info.enabled:
        states = gather_states(meter.state(), dist_info)
        meter.reset()
        meter.merge(*states)
    metrics = meter.compute()
    if hasattr(net, "prompt_description"):
        metrics["prompt"] = net.prompt_description
    return metrics, meter.rows()


def sampling_sweep(model: nn.Module, dataset, steps: list[int], **kwargs) -> list[dict]:
    """Metrics and prediction time of a sampling network (``predict(image, steps=K)``) per ``K``.

    Args:
        model: a network whose ``predict`` takes ``steps`` (SegDT: Euler steps of the flow).
        dataset: evaluation split.
        steps: the step counts to evaluate.
        kwargs: passed to :func:`evaluate_model` (device, eval_config, collate_fn, ...).

    Returns:
        One row per ``K``: per-image Dice and IoU, global Dice, and ``ms_per_image``, the wall time
        of ``predict`` alone (metric computation excluded) divided by the number of images.
    """
    import inspect
    import time

    net = unwrap(model)
    if "steps" not in inspect.signature(getattr(net, "predict", lambda: None)).parameters:
        raise ValueError(
            f"{type(net).__name__} has no predict(image, steps=K); --sampling-steps applies to "
            "sampling networks such as SegDT."
        )
    rows = []
    for k in steps:
        seconds = [0.0]

        def timed(m, image, k=k, seconds=seconds):
            start = time.perf_counter()
            logits = unwrap(m).predict(image, steps=k)
            seconds[0] += time.perf_counter() - start
            return logits

        metrics, _ = evaluate_model(model, dataset, predictor=timed, **kwargs)
        rows.append(
            {
                "steps": k,
                "dice": metrics["per_image"]["dice"],
                "iou": metrics["per_image"]["iou"],
                "global_dice": metrics["global"]["dice"],
                "ms_per_image": 1000 * seconds[0] / metrics["n_images"],
            }
        )
    return rows
