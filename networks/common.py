"""Helpers every network shares: input-shape checks and loading pretrained weights from a local
path."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def check_input_shape(x: torch.Tensor, divisor: int, network: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, C, H, W]`` with H and W multiples of ``divisor``.

    The message names the divisor and the padded size to use (smp style).
    """
    if x.ndim != 4:
        raise ValueError(f"{network} expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    if h % divisor or w % divisor:
        ph, pw = -(-h // divisor) * divisor, -(-w // divisor) * divisor
        raise ValueError(
            f"{network} needs height and width divisible by {divisor}, got {h}x{w}; "
            f"pad or resize the input to {ph}x{pw}."
        )


_FROM_CHECKPOINT = contextvars.ContextVar("dermseg_weights_from_checkpoint", default=False)


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Inside this context :func:`load_pretrained` loads nothing and returns ``([], [])``.

    Used when a network is rebuilt from a dermseg checkpoint: the checkpoint's state dict holds
    every weight (pretrained parts included), so the original weight files need not exist any more.
    """
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad ``[B, C, H, W]`` at the bottom/right so H and W are multiples of ``divisor``.

    On ImageNet-normalised input zero is the mean colour. Callers crop the output back to H x W.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % divisor, -w % divisor
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def pad_or_check(x: torch.Tensor, divisor: int, pad: bool, network: str) -> torch.Tensor:
    """Networks with a ``pad_input`` switch: zero-pad ``[B, C, H, W]`` to multiples of ``divisor``
    (the caller crops its logits back), or raise :func:`check_input_shape`'s error."""
    check_input_shape(x, 1 if pad else divisor, network)
    return pad_to_multiple(x, divisor) if pad else x


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"total", "trainable"}`` parameter counts (buffers not counted; frozen = the rest)."""
    params = list(module.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def load_pretrained(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    key_map: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    allowed_missing: Iterable[str] = (),
    allowed_unexpected: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """Load weights from a local file into ``module`` and report the key mismatch.

    Args:
        module: the module to load into.
        path: a ``.pth``/``.pt`` file (a state dict, or a dict holding one under
        ``model``/``state_dict``).
        key_map: converts the file's key layout into ``module``'s (e.g. official Swin -> ours).
        allowed_missing: prefixes of module keys that may stay uninitialised (e.g. a new head).
        allowed_unexpected: prefixes of file keys that may be ignored.

    Returns:
        ``(missing, unexpected)`` key lists (after ``key_map``).

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: keys are missing/unexpected beyond the allowed prefixes, or shapes differ.
    """
    if _FROM_CHECKPOINT.get():
        return [], []
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights '{path}' not found; dermseg never downloads weights, "
            "download the file yourself and pass its local path."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if key_map is not None:
        state = key_map(state)
    own = module.state_dict()
    shape_errors = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if shape_errors:
        raise RuntimeError(f"shape mismatch loading '{path}': " + "; ".join(shape_errors[:10]))
    # nn.Module's own method: some libraries override load_state_dict without returning the report
    # (smp encoders drop the classifier keys and return None).
    result = nn.Module.load_state_dict(module, state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    bad_missing = [k for k in missing if not k.startswith(tuple(allowed_missing))]
    bad_unexpected = [k for k in unexpected if not k.startswith(tuple(allowed_unexpected))]
    if bad_missing or bad_unexpected:
        raise RuntimeError(
            f"loading '{path}': {len(bad_missing)} missing key(s) {bad_missing[:8]} and "
            f"{len(bad_unexpected)} unexpected key(s) {bad_unexpected[:8]}; "
            "is this the right file? "
            "Pass allowed_missing/allowed_unexpected prefixes if the difference is intended."
        )
    return missing, unexpected
