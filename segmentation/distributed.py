"""PyTorch distributed (DDP) helpers: process-group set-up from ``torchrun``'s environment,
evaluation sharding, exact metric gathering, buffer broadcast, and signal handling.

``torchrun --nproc_per_node N tools/train.py --cfg ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; multi-node runs add
``--nnodes``/``--node_rank``/``--rdzv_endpoint``. Without those variables everything here degrades
to a single process.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Subset


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, checkpoints and results."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistInfo()


def init_distributed() -> DistInfo:
    """Join the process group of ``torchrun``'s environment (``nccl`` on CUDA, else ``gloo``).

    Returns a single-process :class:`DistInfo` when ``WORLD_SIZE`` is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(dataset, info: DistInfo):
    """Contiguous, non-padded slice of an evaluation set for this rank.

    Contiguous blocks concatenated in rank order give the original order, so gathered per-image
    rows (and any float sums over them) are identical to a single-process evaluation; no image is
    repeated.
    """
    if not info.enabled:
        return dataset
    n = len(dataset)
    start, stop = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
    return Subset(dataset, range(start, stop))


def gather_states(state: dict, info: DistInfo) -> list[dict]:
    """Every rank's metric state (``SegmentationMetrics.state()``), in rank order."""
    if not info.enabled:
        return [state]
    states: list = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, in place.

    DDP broadcasts buffers at the start of each training forward, but every rank then updates its
    own running statistics from its own shard of the batch, so after a step the ranks disagree.
    Called before validation and before a checkpoint is written, it makes every rank evaluate
    the network rank 0 saves, so a sharded validation equals a single-process evaluation of the
    saved checkpoint.
    """
    if not info.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def all_reduce_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank raised ``flag`` (stop requests, non-finite steps)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([int(flag)])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the training loop checks after each step.

    The loop then writes a final checkpoint and exits cleanly; a second signal exits at once.
    :func:`request_stop` sets the same flag from inside the process, without a signal.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._signalled = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self._signalled:  # counts signals only: a request_stop before it is not a first signal
            raise KeyboardInterrupt
        self._signalled = True
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def request_stop(reason: str) -> bool:
    """Ask this process's running training loop to stop after its current step, as SIGTERM would
    (a resumable checkpoint, then :class:`~segmentation.errors.RunStopped`), without a signal.

    Safe from any thread. A stop already requested (by a signal) keeps its reason; a signal that
    arrives after this call still counts as the first signal (it does not end the process at once).

    Returns:
        False when no training loop is running in this process (no :class:`StopRequest` holds
        SIGTERM), so the caller has to end the process itself.
    """
    stop = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not isinstance(stop, StopRequest):
        return False
    if stop.requested is None:
        stop.requested = reason
    return True
