"""Backend resolution and the process-wide compiled FlexAttention shared by the attention kernels.

Private torch APIs used by the kernels are reached only from this package, behind
:func:`torch_at_least`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

BACKENDS = ("auto", "reference", "sdpa", "flex", "triton")
ENV_VAR = "DERMSEG_ATTENTION_BACKEND"
# FlexAttention with captured-buffer gradients and BlockMask.from_kv_blocks landed in torch 2.6.
FLEX_MIN_TORCH = (2, 6)

_compiled_flex: Callable | None = None


def torch_at_least(version: tuple[int, int]) -> bool:
    """True when the running torch is at least ``version`` (major, minor)."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= version


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """True when autograd will record an op on any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def flex_unavailable_reason(device: torch.device, grad: bool) -> str | None:
    """Why FlexAttention cannot run here, or ``None`` when it can."""
    if not torch_at_least(FLEX_MIN_TORCH):
        return f"FlexAttention needs torch >= 2.6 (found {torch.__version__})"
    if device.type == "cpu" and grad:
        return (
            "FlexAttention has no CPU backward in this torch; run it under torch.no_grad() "
            "or choose backend 'sdpa' / 'reference' for training on CPU"
        )
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention runs on cpu and cuda, not on '{device.type}'"
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run here (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (interpret and device.type == "cpu"):
        return (
            f"the Triton kernel needs CUDA tensors (got device '{device.type}'); on CPU it runs "
            "only for testing with TRITON_INTERPRET=1 set before triton is imported"
        )
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed; pip install triton or choose backend 'sdpa'"
    return None


def resolve_backend(
    op: str,
    backend: str,
    implemented: tuple[str, ...],
    unavailable: dict[str, str | None],
    auto: Callable[[], str],
) -> str:
    """Turn a requested backend into the one to run, raising clear errors for impossible requests.

    Args:
        op: operation name for messages ("window attention").
        backend: requested backend; ``"auto"`` first consults ``DERMSEG_ATTENTION_BACKEND``.
        implemented: backends this operation has.
        unavailable: backend -> reason it cannot run for this call (``None`` when it can).
        auto: the measured policy, called only when no explicit backend is set.
    """
    source = "backend"
    if backend == "auto" and os.environ.get(ENV_VAR, "auto") != "auto":
        backend, source = os.environ[ENV_VAR], f"{ENV_VAR} environment variable"
    if backend not in BACKENDS:
        raise ValueError(
            f"{op}: unknown backend '{backend}' (from the {source}); choose one of {BACKENDS}."
        )
    if backend == "auto":
        return auto()
    if backend not in implemented:
        raise ValueError(
            f"{op}: backend '{backend}' (from the {source}) is not implemented for this operation; "
            f"choose one of {('auto', *implemented)}."
        )
    reason = unavailable.get(backend)
    if reason is not None:
        raise RuntimeError(f"{op}: backend '{backend}' (from the {source}) cannot run: {reason}.")
    return backend


def compiled_flex_attention() -> Callable:
    """``torch.compile(flex_attention)``, built once per process (a new shape compiles once)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Detach inputs for a CPU forward: flex refuses CPU tensors requiring grad even in no_grad."""
    if tensors[0].device.type == "cpu" and not torch.is_grad_enabled():
        return tuple(t.detach() for t in tensors)
    return tensors
