"""Efficient (linear) attention of Shen, Zhang, Zhao, Yi, Li, "Efficient Attention: Attention with
Linear Complexities", WACV 2021.

Keys are normalised over tokens, queries over their channels, and the attention is factorised as
``context = softmax_N(K) V^T`` (one ``[dk, dv]`` matrix per head) followed by ``out = context^T
softmax_d(Q)``: memory and time are linear in the number of tokens. Keys and values may come from a
different (e.g. spatially reduced) token set than the queries.

Shapes: ``q`` ``[B, heads, dk, Nq]``, ``k`` ``[B, heads, dk, Nk]``, ``v`` ``[B, heads, dv, Nk]``
(channels-first per head, the layout 1x1 convolutions produce). There is no fused path: both matmuls
are already linear in N, so ``reference`` is the only backend; the dispatcher exists so that every
attention in dermseg is selected the same way.
"""

from __future__ import annotations

import torch

BACKENDS = ("auto", "reference")


def context(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-head context ``softmax_N(K) V^T``: ``[B,h,dk,Nk], [B,h,dv,Nk] -> [B,h,dk,dv]``."""
    return k.softmax(dim=-1) @ v.transpose(-2, -1)


def read_context(ctx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Read a context: ``ctx^T softmax_dk(Q)``, ``[B,h,dk,dv], [B,h,dk,N] -> [B,h,dv,N]``."""
    return ctx.transpose(-2, -1) @ q.softmax(dim=-2)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain two-matmul efficient attention. Returns ``[B, heads, dv, Nq]``."""
    return read_context(context(k, v), q)


def efficient_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Dispatch efficient attention: ``auto`` and ``reference`` run :func:`reference`.

    Whatever ``DERMSEG_ATTENTION_BACKEND`` names for the softmax attentions (``auto``, ``flex``,
    ``triton``, ...) has no efficient-attention counterpart, so ``auto`` runs ``reference`` under
    every value of it.
    """
    if backend == "auto":  # every backend named in the environment (auto, flex, ...) runs reference
        backend = "reference"
    if backend not in BACKENDS:
        raise ValueError(
            f"efficient attention backend '{backend}' unknown; choose one of {BACKENDS} "
            "(its only computation path is 'reference', which is already linear in the tokens)."
        )
    if q.ndim != 4 or k.shape[:3] != q.shape[:3] or v.shape[:2] != k.shape[:2]:
        raise ValueError(
            "efficient attention expects q [B, h, dk, Nq], k [B, h, dk, Nk], v [B, h, dv, Nk]; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    if k.shape[-1] != v.shape[-1]:
        raise ValueError(
            f"keys and values must cover the same tokens, got Nk={k.shape[-1]}, Nv={v.shape[-1]}."
        )
    return reference(q, k, v)
