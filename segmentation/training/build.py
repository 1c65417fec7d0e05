"""Build every object of an experiment from a validated :class:`~segmentation.config.Config`.

One place turns config sections into objects, so ``tools/train.py``, ``tools/evaluate.py`` and the
benchmark build runs identically. ``in_channels``/``num_classes`` come from the dataset; the YAML
may repeat them, but a disagreement is an error. :func:`run_training` builds and checks everything
(:mod:`segmentation.training.checks`) before it writes anything into the run folder.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

import networks
from networks.common import count_parameters
from segmentation.config import Config, ConfigError
from segmentation.errors import DataError, UserError
from segmentation.optim import OPTIMIZERS, SCHEDULERS
from segmentation.registry import DATASETS, LOSSES


def build_dataset(config: Config, split: str, *, train: bool | None = None):
    """The dataset of ``split`` with the transform for training (augmented) or evaluation.

    Raises:
        DataError: the dataset cannot be built (unreadable tree, empty split, bad argument), or
            under ``data.on_error: skip`` more than ``data.max_skip_fraction`` of it is broken.
        FileNotFoundError: the data root or a split folder does not exist.
    """
    import segmentation.data  # noqa: F401  (registers datasets)
    from segmentation.data.transforms import build_transform

    data, spec = config.data, config.dataset_kwargs()
    name, image_size = data.name, data.image_size
    preprocess, extra_channels = data.preprocess or (), data.extra_channels or ()
    target, _ = DATASETS.get(name)
    if "image_size" in DATASETS.accepted_kwargs(target) and image_size is not None:
        spec["image_size"] = image_size
    train = split == "train" if train is None else train
    transform = None
    if image_size is not None or preprocess or extra_channels:
        transform = build_transform(
            image_size=image_size,
            train=train,
            augment=data.augment if train else "none",
            seed=config.train.seed,
            preprocess=preprocess,
            extra_channels=extra_channels,
        )
    try:
        dataset = DATASETS.build(name, split=split, transform=transform, **spec)
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        message = err.args[0] if err.args else err
        raise DataError(f"data ({name}, split '{split}'): {message}") from err
    if data.mask_threshold is not None:
        if not hasattr(dataset, "mask_threshold"):
            raise ConfigError(
                f"data.mask_threshold = {data.mask_threshold}, but dataset '{name}' does not "
                "read masks from files; remove the key."
            )
        dataset.mask_threshold = data.mask_threshold
    if extra_channels:  # appended by the transform, so the network input widens with them
        from segmentation.data.channels import count_extra_channels

        dataset.in_channels = dataset.in_channels + count_extra_channels(extra_channels)
    dataset.skipped = []
    if data.on_error == "skip" and hasattr(dataset, "exclude_unreadable"):
        total = len(dataset)
        dataset.skipped = dataset.exclude_unreadable()
        for item in dataset.skipped:
            warnings.warn(
                f"data.on_error=skip: skipped {item['id']}: {item['error']}", stacklevel=2
            )
        if len(dataset.skipped) > data.max_skip_fraction * total:
            raise DataError(
                f"{len(dataset.skipped)} of {total} {split} images of '{name}' are unreadable or "
                f"broken (more than data.max_skip_fraction = {data.max_skip_fraction}); the first: "
                f"{dataset.skipped[0]['error']}. Repair the data or raise the threshold."
            )
    return dataset


def model_spec(config: Config, dataset) -> dict:
    """``{"name", "kwargs"}`` of the network, with ``in_channels``/``num_classes`` from the
    dataset."""
    spec = config.section("model")
    name = spec.pop("name")
    for key in ("in_channels", "num_classes"):
        from_data = getattr(dataset, key)
        if key in spec and spec[key] != from_data:
            raise ConfigError(
                f"model.{key} = {spec[key]} but the dataset "
                f"'{config.raw['data']['name']}' provides "
                f"{from_data}; remove model.{key} from the config (it comes from the data)."
            )
        spec[key] = from_data
    return {"name": name, "kwargs": spec}


def build_model(spec: dict) -> nn.Module:
    """Build the network described by :func:`model_spec`.

    Raises:
        ConfigError: the constructor rejected an argument (its message names it).
    """
    try:
        return networks.build_network(spec["name"], **spec["kwargs"])
    except (ValueError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"model ({spec['name']}): {err}") from err


def build_loss(config: Config) -> nn.Module:
    """The configured segmentation loss ``(logits [B,K,H,W], mask long [B,H,W]) -> scalar``."""
    import segmentation.losses  # noqa: F401  (registers losses)

    spec = config.section("loss")
    return LOSSES.build(spec.pop("name"), **spec)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters.

    Networks may define ``param_groups(lr)`` (e.g. a 10x head learning rate); otherwise one group.
    """
    spec = config.section("optim")
    name = spec.pop("name")
    if hasattr(model, "param_groups") and inspect.ismethod(model.param_groups):
        params = model.param_groups(spec.get("lr", 1.0e-3))
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.build(name, params=params, **spec)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer):
    """The configured learning-rate schedule (stepped once per training step)."""
    spec = config.section("sched")
    return SCHEDULERS.build(
        spec.pop("name"), optimizer=optimizer, total_steps=config.train.steps, **spec
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device = '{name}' is not a device; use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device = '{name}' but CUDA is not available; use 'cpu' or 'auto'."
        )
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (initialisation, dropout; data order is seeded separately)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(config: Config, run_dir, *, resume: dict | None = None, extra_hooks=()) -> dict:
    """Train ``config`` into ``run_dir`` (``config.yaml``, ``checkpoints/``, ``tb/``,
    ``metrics.json``, and ``plan.json`` with ``train.plan: auto``); under ``torchrun`` every
    process calls this and only rank 0 writes.

    Data, network, image size, batch size and the resumed checkpoint are all built and checked
    before the first write, so a run that fails at set-up leaves the run folder as it was.

    Args:
        config: validated experiment config.
        run_dir: output folder.
        resume: a checkpoint dict to continue from (its step, optimizer, RNG states...).
        extra_hooks: hooks appended after the standard ones (main process only).

    Returns:
        The final validation metrics.

    Raises:
        UserError: a set-up check failed (nothing written), or training stopped on a non-finite
            loss (``NonFiniteError``; the checkpoints already written are intact).
        RunStopped: a SIGTERM/SIGINT stopped the run after it wrote a resumable checkpoint and
            ``metrics.json``.
    """
    import json
    import math
    from pathlib import Path

    from segmentation.config import dump_config
    from segmentation.data import collate
    from segmentation.distributed import init_distributed
    from segmentation.errors import RunStopped
    from segmentation.training import checks
    from segmentation.training.hooks import CheckpointHook, ConsoleHook, TensorBoardHook
    from segmentation.training.trainer import Trainer

    dist_info = init_distributed()
    plan = None
    if config.train.plan == "auto":  # every rank plans (deterministic), so all agree
        from segmentation.planning import format_plan, plan_config

        config, plan = plan_config(config)
    cfg = config.train
    run_dir = Path(run_dir)
    set_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    train_set = build_dataset(config, "train")
    val_set = build_dataset(config, "val")
    checks.check_batch_fits(train_set, cfg.batch_size * dist_info.world_size, dist_info)
    for dataset in (train_set, val_set):
        checks.check_masks_not_all_empty(dataset, config.data.name)
    spec = model_spec(config, train_set)
    if resume is not None:
        checks.check_resume_spec(spec, resume)
    model = build_model(spec)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    if cfg.sync_bn and dist_info.enabled:
        if device.type != "cuda":
            raise ConfigError(
                f"train.sync_bn: true needs CUDA (SyncBatchNorm runs on GPUs only), but this run "
                f"is on {device}; set train.sync_bn: false: rank 0's BatchNorm statistics are "
                "then broadcast to every process before each validation."
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    checks.check_image_size(model, spec, config.data.image_size, device)
    if cfg.onednn_linear:
        from networks.kernels.linear import convert_linear

        convert_linear(model)
    optimizer = build_optimizer(config, model)
    factor = {"none": 1.0, "linear": dist_info.world_size, "sqrt": math.sqrt(dist_info.world_size)}
    for group in optimizer.param_groups:
        group["lr"] *= factor[cfg.lr_scaling]
        group["initial_lr"] = group["lr"]
    scheduler = build_scheduler(config, optimizer)
    hooks = [CheckpointHook(run_dir), TensorBoardHook(run_dir), ConsoleHook(), *extra_hooks]
    trainer = Trainer(
        model=torch.compile(model) if cfg.compile else model,
        loss_fn=build_loss(config),
        optimizer=optimizer,
        scheduler=scheduler,
        train_set=train_set,
        val_set=val_set,
        config=config,
        spec=spec,
        device=device,
        hooks=hooks if dist_info.is_main else [],
        collate_fn=collate,
        dist_info=dist_info,
    )
    if resume is not None:
        trainer.load_state_dict(resume)
    # Everything is built and checked: only now write into the run folder.
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")
        if plan is not None:
            print(format_plan(plan))
            if resume is None or not (run_dir / "plan.json").exists():
                (run_dir / "plan.json").write_text(json.dumps(plan, indent=2))
        effective = cfg.batch_size * dist_info.world_size * cfg.grad_accum
        counts = count_parameters(model)
        print(
            f"{spec['name']}: {counts['total'] / 1e6:.2f} M parameters "
            f"({counts['trainable'] / 1e6:.2f} M trainable) "
            f"on {device}; effective batch {effective} = {cfg.batch_size} per process x "
            f"{dist_info.world_size} process(es) x {cfg.grad_accum} accumulation step(s); "
            f"learning-rate scaling '{cfg.lr_scaling}' (x{factor[cfg.lr_scaling]:g} -> "
            f"{optimizer.param_groups[0]['initial_lr']:.3g})"
        )
    metrics = trainer.fit()
    if not metrics:  # resumed at the final step: nothing left to train, report the current model
        metrics = trainer.evaluate(val_set)
    if dist_info.is_main:
        payload = {
            "split": "val",
            "step": trainer.step,
            "stopped_by": trainer.stop_reason,
            "best": trainer.best,
            "nonfinite_steps_skipped": trainer.counters["nonfinite_steps"],
            "parameters": count_parameters(model),
            "skipped_files": {"train": train_set.skipped, "val": val_set.skipped},
            **metrics,
        }
        (run_dir / "metrics.json").write_text(json.dumps(payload, indent=2))
    if trainer.stop_reason:
        raise RunStopped(
            f"stopped by {trainer.stop_reason} at step {trainer.step} of {cfg.steps}; its "
            f"checkpoint is written. Resume with: python tools/train.py --resume {run_dir}",
            reason=trainer.stop_reason,
        )
    return metrics


def set_determinism(enabled: bool) -> None:
    """``train.deterministic``: deterministic kernels (errors on ops that have none) and cuDNN."""
    import os

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False
