"""Step-indexed data loading: the batch at step ``s`` depends only on ``(seed, s)``.

This is what makes a resumed run bit-identical to an uninterrupted one: data order is a fixed
permutation per epoch (seeded by ``(seed, epoch)``), and every sample's augmentation is seeded by
``(seed, step, slot)`` instead of by a generator whose state would have to be saved. Under DDP
each rank takes a disjoint slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError


class StepBatchSampler(Sampler):
    """Yields lists of ``(index, augmentation_seed)`` for steps ``start_step, start_step + 1, ...``.

    Args:
        num_samples: dataset length.
        batch_size: global batch size (all ranks together); must divide by ``world_size``.
        seed: run seed.
        start_step: first step to yield (the resumed step).
        total_steps: stop after this step (exclusive); ``None`` runs forever.
        rank, world_size: this process's slice of each global batch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        total_steps: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < batch_size:
            raise ConfigError(
                f"the training set has {num_samples} images but the batch size is {batch_size}; "
                "lower train.batch_size or add data."
            )
        if batch_size % world_size:
            raise ConfigError(
                f"global batch {batch_size} is not divisible by {world_size} processes."
            )
        self.n, self.batch, self.seed = num_samples, batch_size, seed
        self.start, self.total, self.rank, self.world = start_step, total_steps, rank, world_size
        self.per_epoch = num_samples // batch_size  # drop the last incomplete batch

    def __len__(self) -> int:
        return (self.total - self.start) if self.total is not None else 2**62

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, perm, perm_epoch = self.start, None, -1
        local = self.batch // self.world
        while self.total is None or step < self.total:
            epoch, pos = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=gen).tolist(), epoch
            batch = perm[pos * self.batch : (pos + 1) * self.batch]
            mine = range(self.rank * local, (self.rank + 1) * local)
            yield [(batch[j], (self.seed * 1_000_003 + step) * 4096 + j) for j in mine]
            step += 1


class SeededAugmentation(Dataset):
    """Wraps a dataset so ``ds[(index, seed)]`` re-seeds its transform before reading ``index``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed % 2**32)
        return self.dataset[index]


def train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    total_steps: int,
    num_workers: int = 0,
    collate_fn=None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader that yields the batches of steps ``start_step .. total_steps - 1``."""
    sampler = StepBatchSampler(
        len(dataset),
        batch_size,
        seed=seed,
        start_step=start_step,
        total_steps=total_steps,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        SeededAugmentation(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        persistent_workers=False,
    )


def eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 0, collate_fn=None):
    """Sequential, unshuffled loader over every image of an evaluation split."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
