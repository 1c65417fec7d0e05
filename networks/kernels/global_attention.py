"""Global multi-head attention (DiT, SAM ViT) with an optional additive bias.

Shapes: ``q, k, v`` ``[B, heads, N, d]``; ``bias`` broadcastable to ``[B, heads, N, N]``.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "reference")


def reference(q, k, v, bias=None, scale=None):
    """Plain matmul/softmax attention. Returns ``[B, heads, N, d]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


def global_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Dispatch global attention to a backend (``DERMSEG_ATTENTION_BACKEND`` overrides ``auto``)."""
    if backend == "auto":
        backend = os.environ.get("DERMSEG_ATTENTION_BACKEND", "reference")
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"global attention backend '{backend}' unknown; choose one of {BACKENDS}.")
    return reference(q, k, v, bias, scale)
