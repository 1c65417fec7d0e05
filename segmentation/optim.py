"""Optimizers by name, and learning-rate schedules for iteration-based training (per-step, not
per-epoch)."""

from __future__ import annotations

import math

import torch

from networks.registry import Registry

SCHEDULERS = Registry("scheduler")
OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)


def _lambda(optimizer, fn):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


@SCHEDULERS.register("constant")
def constant(optimizer, *, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up then a constant learning rate."""
    return _lambda(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


@SCHEDULERS.register("warmup_cosine")
def warmup_cosine(optimizer, *, total_steps: int, warmup_steps: int = 100, min_ratio: float = 0.01):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_ratio`` x the base rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _lambda(optimizer, factor)


@SCHEDULERS.register("poly")
def poly(optimizer, *, total_steps: int, warmup_steps: int = 0, power: float = 0.9):
    """Linear warm-up, then polynomial decay ``(1 - progress) ** power`` (DeepLab/MCANet style)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return max(0.0, 1 - progress) ** power

    return _lambda(optimizer, factor)


@SCHEDULERS.register("plateau")
def plateau(optimizer, *, total_steps: int, factor: float = 0.5, patience: int = 3):
    """Reduce the rate by ``factor`` when the validation metric has not improved for ``patience``
    evaluations."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=factor, patience=patience
    )
