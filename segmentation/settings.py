"""The typed settings sections of an experiment: ``data`` (its own keys), ``train`` and ``eval``.

Each is a frozen dataclass whose fields declare their type (the annotation) and, through
:func:`setting`, their accepted range or choices; :func:`segmentation.config.validate` checks every
key of these sections against them when a config loads. A new numeric setting must declare its
range (``tests/test_config.py`` checks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["DataConfig", "EvalConfig", "TrainConfig", "setting"]


def setting(default: Any, *, min: float | None = None, max: float | None = None, choices=None):
    """A dataclass field with its accepted range (``min``/``max``, inclusive) or ``choices``.

    The type comes from the annotation; :func:`validate` checks type, range and choices of every
    key of the ``data``, ``train`` and ``eval`` sections at load time.
    """
    return dataclasses.field(default=default, metadata={"min": min, "max": max, "choices": choices})


@dataclass(frozen=True)
class DataConfig:
    """The data section's own keys; every other key of ``data:`` goes to the dataset constructor.

    Attributes:
        name: registered dataset (``synthetic``, ``paired_folder``, ``isic2018``, ...).
        image_size: side of the square every image and mask is resized to (datasets that make
            their images, such as ``synthetic``, also receive it); ``null`` keeps stored sizes.
        augment: training augmentation set (``segmentation.data.transforms.AUGMENTATIONS``).
        preprocess: pre-processing steps (``segmentation.data.preprocess``), names or
            ``{name, **kwargs}``.
        extra_channels: channels appended to RGB (``segmentation.data.channels``).
        on_error: ``raise`` at the first unreadable image or wrong-size mask, or ``skip`` them
            (every item is read once at set-up; the skipped ones are listed in metrics.json).
        max_skip_fraction: under ``skip``, the largest fraction of a split that may be excluded.
        mask_threshold: a pixel of a mask read from a file is lesion when its value is
            ``> mask_threshold``. ``null`` (default) means 128, the ISIC scorer's rule, and
            refuses masks whose maximum is 1..128 (a {0, 1} mask would read as empty); set 0 for
            masks stored as {0, 1}.
    """

    name: str = ""
    image_size: int | None = setting(None, min=1)
    augment: str = "default"
    preprocess: list | None = None
    extra_channels: list | None = None
    on_error: str = setting("raise", choices=("raise", "skip"))
    max_skip_fraction: float = setting(0.05, min=0.0, max=1.0)
    mask_threshold: int | None = setting(None, min=0, max=254)


@dataclass(frozen=True)
class TrainConfig:
    """Run-level training settings (the ``train:`` section).

    Attributes:
        steps: optimisation steps in total.
        batch_size: images per step (per process under DDP).
        eval_every: validate (and maybe save ``best.pt``) every this many steps; the last step
            always validates.
        log_every: console/TensorBoard scalars every this many steps.
        checkpoint_every: write ``last.pt`` every this many steps (and at the end).
        seed: seeds data order, augmentation and initialisation.
        num_workers: DataLoader worker processes.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        amp: autocast; ``auto`` enables bf16/fp16 autocast on CUDA only; ``on`` also uses bf16 on
            CPU, where its speed depends on the CPU's bf16 support (1.4-1.5x for the main suite's
            convolutional rows on a 2-core AMD EPYC, slower on CPUs that emulate bf16) and the
            numerics change (docs/benchmark.md, "Precision").
        grad_clip: max global gradient norm, 0 disables.
        onednn_linear: route ``nn.Linear`` through oneDNN on CPU (kernels issue; same weights).
        compile: wrap the model with ``torch.compile`` after moving it to the device.
        image_panel_every: TensorBoard image panel period in steps (0 disables).
        grad_accum: micro-batches per optimisation step (effective batch = batch_size x processes
            x grad_accum).
        sync_bn: convert BatchNorm layers to SyncBatchNorm under DDP (CUDA only). Without it,
            rank 0's BatchNorm statistics are broadcast to every rank before each validation.
        lr_scaling: ``none`` (use optim.lr as written), ``linear`` or ``sqrt``: multiply optim.lr by
            the number of processes (or its square root), i.e. relative to a one-process run with
            the same per-process batch. The rule used is printed at start.
        nonfinite: on a non-finite loss or gradient, ``stop`` (raise before the update) or ``skip``
            the update and restore the BatchNorm statistics its forward pass changed (counted in
            metrics.json).
        max_nonfinite: consecutive skipped steps after which training stops anyway.
        keep_checkpoints: keep this many ``step_*.pt`` files besides ``last.pt``/``best.pt``
            (0: only ``last.pt`` and ``best.pt``).
        deterministic: ``torch.use_deterministic_algorithms`` (+ cuDNN determinism); two runs with
            the same seed then give identical results on the same hardware.
        plan: ``auto`` derives the input size, batch size, network topology and normalisation
            from the training split (``segmentation.planning``, nnU-Net's 2-D rules) wherever
            the experiment leaves them out, prints the plan and writes ``plan.json``; ``off``.
        plan_memory_gb: the planner's memory budget (nnU-Net's 8 GB GPU target; on CPU a compute
            budget).
        ema_decay: keep an exponential moving average of the weights (Polyak averaging, as
            timm's ``--model-ema``) with this decay, warmed up as ``min(ema_decay, (1 + n) /
            (10 + n))`` after ``n`` updates; validation, ``best.pt`` and ``last.pt``'s ``model``
            then hold the average (the trained weights stay in ``train_model`` for resuming).
            ``null`` (default) turns it off.
    """

    steps: int = setting(1000, min=1)
    batch_size: int = setting(8, min=1)
    eval_every: int = setting(250, min=1)
    log_every: int = setting(25, min=1)
    checkpoint_every: int = setting(250, min=1)
    seed: int = setting(0, min=0)
    num_workers: int = setting(0, min=0)
    device: str = "auto"
    amp: str = setting("auto", choices=("auto", "on", "off"))
    grad_clip: float = setting(0.0, min=0.0)
    onednn_linear: bool = False
    compile: bool = False
    image_panel_every: int = setting(500, min=0)
    grad_accum: int = setting(1, min=1)
    sync_bn: bool = False
    lr_scaling: str = setting("none", choices=("none", "linear", "sqrt"))
    nonfinite: str = setting("stop", choices=("stop", "skip"))
    max_nonfinite: int = setting(10, min=1)
    keep_checkpoints: int = setting(3, min=0)
    deterministic: bool = False
    plan: str = setting("off", choices=("off", "auto"))
    plan_memory_gb: float = setting(8.0, min=0.0)
    ema_decay: float | None = setting(None, min=0.0, max=0.999999)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (the ``eval:`` section).

    Attributes:
        metric: validation metric that selects ``best.pt`` (a per-image metric name, e.g.
            ``dice``; ``hd95``/``assd`` select the lowest value and switch ``boundary`` on).
        batch_size: images per evaluation batch.
        boundary: compute HD95/ASSD during validation in training (costly on CPU, off by
            default); on whenever ``metric`` is a boundary metric.
        empty: policy when ground truth and prediction are both empty: ``one`` (ISIC), ``nan`` or
            ``zero``.
        boundary_definition: HD95/ASSD definition, ``monai`` (HD95: max of the directed 95th
            percentiles) or ``medpy`` (HD95: 95th percentile of the pooled distances); see
            ``segmentation.evaluation.metrics``.
    """

    metric: str = "dice"
    batch_size: int = setting(16, min=1)
    boundary: bool = False
    empty: str = setting("one", choices=("one", "nan", "zero"))
    boundary_definition: str = setting("monai", choices=("monai", "medpy"))
