"""Checkpoints: atomic writes, ``weights_only`` loading, and rebuilding the exact model from the
file.

A checkpoint is a plain dict of tensors and primitives (loadable with
``torch.load(weights_only=True)``, so no pickled code runs): ``model_spec`` (registered name +
constructor kwargs), ``model`` (state dict without ``torch.compile``/DDP prefixes), ``config``
(the resolved experiment config), ``optimizer``, ``scheduler``, ``step``, ``best`` (metric name
and value) and ``rng`` (python, numpy and torch generator states). A checkpoint whose weights hold
a non-finite value is never written.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import networks
from networks.common import weights_from_checkpoint
from segmentation.errors import CheckpointError, NonFiniteError

_PREFIXES = ("_orig_mod.", "module.")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside ``torch.compile`` and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` (compile) and ``module.`` (DDP) prefixes from state-dict keys."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as ``weights_only``-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A crash at any moment leaves either the previous complete file or the new complete file.

    Raises:
        NonFiniteError: ``payload["model"]`` holds a NaN or infinite value (nothing is written).
    """
    path = Path(path)
    for key, value in payload.get("model", {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            raise NonFiniteError(
                f"refusing to write '{path}': model tensor '{key}' holds non-finite values; the "
                "checkpoints already written are intact. Lower optim.lr, enable "
                "train.grad_clip, or check the data for NaN/inf pixels."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def link_atomically(source: Path, target: Path) -> None:
    """Make ``target`` name the same file as ``source`` (a hard link, or a copy where links
    fail), atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete temp files a killed writer left behind (``.NAME.tmp-PID``); return them."""
    leftovers = sorted(Path(folder).glob(".*.tmp-*")) if Path(folder).is_dir() else []
    for path in leftovers:
        path.unlink()
    return leftovers


def find_resumable(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (``last.pt``, then ``step_*.pt`` newest first).

    Unreadable (e.g. truncated) files are skipped with a warning. ``None`` when nothing is usable.
    """
    folder = Path(run_dir) / "checkpoints"
    candidates = [folder / "last.pt", *sorted(folder.glob("step_*.pt"), reverse=True)]
    best: tuple[int, Path] | None = None
    for path in candidates:
        if not path.is_file():
            continue
        try:
            step = load_checkpoint(path)["step"]
        except RuntimeError as err:
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return None if best is None else best[1]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a dermseg checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, truncated, or not a dermseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint '{path}' not found; pass a file such as RUN_DIR/checkpoints/best.pt."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated/corrupt archives raise several exception types
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable or truncated ({type(err).__name__}: {err}); "
            "use another checkpoint from the run folder (e.g. last.pt or best.pt)."
        ) from err
    if not isinstance(ckpt, dict) or "model_spec" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"'{path}' is not a dermseg checkpoint (no 'model_spec'/'model' entries); "
            "for bare weights use networks.common.load_pretrained."
        )
    return ckpt


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` strictly, with a one-line error when they do not fit.

    Args:
        model: the bare network.
        state: a state dict (compile/DDP prefixes are stripped).
        source: what the weights are, for the message (e.g. "checkpoint 'RUN/last.pt'").

    Raises:
        CheckpointError: counting the missing, unexpected and differently shaped tensors and
            naming the first of each.
    """
    state, own = clean_state_dict(state), model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shaped:
        parts = [f"{len(missing)} missing (first '{missing[0]}')"] if missing else []
        parts += [f"{len(unexpected)} unexpected (first '{unexpected[0]}')"] if unexpected else []
        if shaped:
            k = shaped[0]
            parts.append(
                f"{len(shaped)} of another shape (first '{k}': {list(state[k].shape)} in the "
                f"weights, {list(own[k].shape)} in the network)"
            )
        raise CheckpointError(
            f"{source}: the weights do not fit the network {type(model).__name__} "
            f"({', '.join(parts)}). The model specification and the weights disagree: use a "
            "checkpoint written by this run, unedited."
        )
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict[str, Any], *, source: str = "checkpoint") -> nn.Module:
    """Rebuild the network recorded in ``ckpt['model_spec']`` and load its weights (strict).

    Raises:
        CheckpointError: the weights do not fit the network the spec describes.
    """
    spec = ckpt["model_spec"]
    with weights_from_checkpoint():  # pretrained files named in the spec need not exist any more
        model = networks.build_network(spec["name"], **spec["kwargs"])
    load_weights(model, ckpt["model"], source=f"{source} ({spec['name']})")
    return model
