"""Axial (row / column) cross attention as in MCANet (Shao et al. 2023).

Each row (``axis="row"``) or column (``axis="col"``) of a ``[B, C, H, W]`` map is one token whose feature is the
concatenation of its pixels' head channels: ``q, k, v`` ``[B, C, H, W]`` -> per head ``[B, h, H, W*C/h]`` for rows.
q and k are L2-normalised along the feature and the logits are not rescaled (``scale=1``), as in the paper.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "reference")


def _tokens(x: torch.Tensor, num_heads: int, axis: str) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, num_heads, c // num_heads, h, w)
    if axis == "row":
        return x.permute(0, 1, 3, 4, 2).reshape(b, num_heads, h, w * (c // num_heads))  # (B, h, H, W*c)
    return x.permute(0, 1, 4, 3, 2).reshape(b, num_heads, w, h * (c // num_heads))  # (B, h, W, H*c)


def _untokens(t: torch.Tensor, shape: torch.Size, num_heads: int, axis: str) -> torch.Tensor:
    b, c, h, w = shape
    if axis == "row":
        return t.view(b, num_heads, h, w, c // num_heads).permute(0, 1, 4, 2, 3).reshape(b, c, h, w)
    return t.view(b, num_heads, w, h, c // num_heads).permute(0, 1, 4, 3, 2).reshape(b, c, h, w)


def reference(q, k, v, num_heads: int, axis: str):
    """Plain axial attention. ``q, k, v`` ``[B, C, H, W]`` -> ``[B, C, H, W]`` (no residual)."""
    tq = F.normalize(_tokens(q, num_heads, axis), dim=-1)
    tk = F.normalize(_tokens(k, num_heads, axis), dim=-1)
    tv = _tokens(v, num_heads, axis)
    out = (tq @ tk.transpose(-2, -1)).softmax(dim=-1) @ tv
    return _untokens(out, q.shape, num_heads, axis)


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    axis: str,
    backend: str = "auto",
) -> torch.Tensor:
    """Dispatch axial attention (``axis`` "row" or "col") to a backend."""
    if axis not in ("row", "col"):
        raise ValueError(f"axis must be 'row' or 'col', got '{axis}'.")
    if q.shape[1] % num_heads:
        raise ValueError(f"channels {q.shape[1]} not divisible by num_heads={num_heads}.")
    if backend == "auto":
        backend = os.environ.get("DERMSEG_ATTENTION_BACKEND", "reference")
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"axial attention backend '{backend}' unknown; choose one of {BACKENDS}.")
    return reference(q, k, v, num_heads, axis)
