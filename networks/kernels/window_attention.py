"""Windowed multi-head attention with relative-position bias and shifted-window mask (Swin, Liu et al. 2021).

Shapes: ``q, k, v`` are ``[B*nW, heads, N, d]`` with windows of one image contiguous (index ``b * nW + w``);
``bias`` is the gathered relative-position bias ``[heads, N, N]``; ``mask`` is the additive shift mask
``[nW, N, N]`` (0 where attention is allowed, a large negative value across regions).
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "reference")


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_attn: bool = False,
):
    """Plain matmul/softmax window attention; returns ``out`` or ``(out, attn)`` (attn ``[B*nW, h, N, N]``)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (B*nW, h, N, N)
    if bias is not None:
        attn = attn + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(-1, nw, *attn.shape[1:]) + mask[None, :, None]  # (B, nW, h, N, N)
        attn = attn.view(-1, *attn.shape[2:])
    attn = attn.softmax(dim=-1)
    out = attn @ v
    return (out, attn) if return_attn else out


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_attn: bool = False,
    backend: str = "auto",
):
    """Dispatch window attention to a backend (``DERMSEG_ATTENTION_BACKEND`` overrides ``auto``)."""
    if backend == "auto":
        backend = os.environ.get("DERMSEG_ATTENTION_BACKEND", "reference")
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"window attention backend '{backend}' unknown; choose one of {BACKENDS}.")
    return reference(q, k, v, bias, mask, scale, return_attn)
