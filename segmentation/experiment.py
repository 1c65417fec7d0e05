"""Build every object of an experiment from a validated :class:`~segmentation.config.Config`.

One place turns config sections into objects, so ``tools/train.py``, ``tools/evaluate.py`` and the
benchmark
build runs identically. ``in_channels``/``num_classes`` come from the dataset; the YAML may repeat
them, but a
disagreement is an error.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

import networks
from segmentation.config import Config, ConfigError
from segmentation.registry import DATASETS, LOSSES
from segmentation.schedulers import SCHEDULERS


def build_dataset(config: Config, split: str, *, train: bool | None = None, overrides=None):
    """The dataset of ``split`` with the transform for training (augmented) or evaluation."""
    import segmentation.data  # noqa: F401  (registers datasets)
    from segmentation.data.transforms import build_transform

    spec = config.section("data")
    spec.update(overrides or {})
    name = spec.pop("name")
    image_size = spec.pop("image_size", None)
    augment = spec.pop("augment", "default")
    preprocess = spec.pop("preprocess", None) or ()
    extra_channels = spec.pop("extra_channels", None) or ()
    target, _ = DATASETS.get(name)
    if "image_size" in DATASETS.accepted_kwargs(target) and image_size is not None:
        spec["image_size"] = image_size
    train = split == "train" if train is None else train
    transform = None
    if image_size is not None or preprocess or extra_channels:
        transform = build_transform(
            image_size=image_size,
            train=train,
            augment=augment if train else "none",
            seed=config.train.seed,
            preprocess=preprocess,
            extra_channels=extra_channels,
        )
    dataset = DATASETS.build(name, split=split, transform=transform, **spec)
    if extra_channels:  # appended by the transform, so the network input widens with them
        from segmentation.data.channels import count_extra_channels

        dataset.in_channels = dataset.in_channels + count_extra_channels(extra_channels)
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
    """Build the network described by :func:`model_spec`."""
    return networks.build_network(spec["name"], **spec["kwargs"])


def build_loss(config: Config) -> nn.Module:
    """The configured segmentation loss ``(logits [B,K,H,W], mask long [B,H,W]) -> scalar``."""
    import segmentation.losses  # noqa: F401  (registers losses)

    spec = config.section("loss")
    return LOSSES.build(spec.pop("name"), **spec)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters.

    Networks may define ``param_groups(lr)`` (e.g. a 10x head learning rate); otherwise one group.
    """
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    spec = config.section("optim")
    cls = classes[spec.pop("name")]
    if hasattr(model, "param_groups") and inspect.ismethod(model.param_groups):
        params = model.param_groups(spec.get("lr", 1.0e-3))
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    return cls(params, **spec)


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
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device = '{name}' but CUDA is not available; use 'cpu' or 'auto'."
        )
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (initialisation and dropout; data order is seeded
    separately)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(config: Config, run_dir, *, resume: dict | None = None, extra_hooks=()) -> dict:
    """Train ``config`` into ``run_dir`` (``config.yaml``, ``checkpoints/``, ``tb/``,
    ``metrics.json``).

    Args:
        config: validated experiment config.
        run_dir: output folder.
        resume: a checkpoint dict to continue from (its step, optimizer, RNG states...).
        extra_hooks: hooks appended after the standard ones.

    Returns:
        The final validation metrics.
    """
    import json
    from pathlib import Path

    from segmentation.config import dump_config
    from segmentation.data import collate
    from segmentation.hooks import CheckpointHook, ConsoleHook, TensorBoardHook
    from segmentation.trainer import Trainer

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / "config.yaml")
    seed_everything(config.train.seed)
    train_set = build_dataset(config, "train")
    val_set = build_dataset(config, "val")
    spec = model_spec(config, train_set)
    model = build_model(spec)
    device = resolve_device(config.train.device)
    model.to(device)
    if config.train.onednn_linear:
        from networks.kernels.linear import convert_linear

        convert_linear(model)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)
    trainer = Trainer(
        model=torch.compile(model) if config.train.compile else model,
        loss_fn=build_loss(config),
        optimizer=optimizer,
        scheduler=scheduler,
        train_set=train_set,
        val_set=val_set,
        config=config,
        spec=spec,
        device=device,
        hooks=[CheckpointHook(run_dir), TensorBoardHook(run_dir), ConsoleHook(), *extra_hooks],
        collate_fn=collate,
    )
    if resume is not None:
        trainer.load_state_dict(resume)
    metrics = trainer.fit()
    if not metrics:  # resumed at the final step: nothing left to train, report the current model
        metrics = trainer.evaluate(val_set)
    payload = {"split": "val", "step": trainer.step, "best": trainer.best, **metrics}
    (run_dir / "metrics.json").write_text(json.dumps(payload, indent=2))
    return metrics
