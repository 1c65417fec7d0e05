"""Axial (row / column) cross attention as in MCANet (Shao et al. 2023).

Each row (``axis="row"``) or column (``axis="col"``) of a ``[B, C, H, W]`` map is one token whose
feature is the concatenation of its pixels' head channels: ``q, k, v`` ``[B, C, H, W]`` -> per head
``[B, h, H, W*C/h]`` for rows. q and k are L2-normalised along the feature and the logits are not
rescaled (``scale=1``), as in the paper.

Backends:
    reference: matmul + softmax on the token view, the ground truth.
    sdpa: ``F.scaled_dot_product_attention`` on the same token view with ``scale=1``.
    flex: compiled FlexAttention on the token view (no score_mod; CPU: forward only).
    triton: not implemented for this operation (raises): sequences are one row long, so the op is
        memory-bound on the token reshapes, which a fused attention kernel would not remove.

Auto policy (``backend="auto"``; ``DERMSEG_ATTENTION_BACKEND`` overrides it):
    - CPU: reference, with or without grad (sdpa measured no faster; flex has no CPU backward and
      was slower forward).
    - CUDA: sdpa (torch's fused kernels). Not measured here (no GPU).

    Measured with ``tools/benchmark.py --kernel axial --batch 8`` (torch 2.14.1, one thread, load
    ~2 on a shared 2-core machine), MCANet-T MCA block at 224 (``[8, 64, 56, 56]``, 8 heads),
    process-CPU ms, forward / forward+backward: rows reference 11.1 / 37.2, sdpa 11.6 / 38.2, flex
    12.7; columns reference 11.4 / 38.3, sdpa 11.9 / 41.1, flex 12.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from networks.kernels._common import (
    compiled_flex_attention,
    flex_inputs,
    flex_unavailable_reason,
    needs_grad,
    resolve_backend,
)

BACKENDS = ("auto", "reference", "sdpa", "flex")


def _tokens(x: torch.Tensor, num_heads: int, axis: str) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, num_heads, c // num_heads, h, w)
    if axis == "row":
        return x.permute(0, 1, 3, 4, 2).reshape(b, num_heads, h, -1)  # (B, h, H, W*c)
    return x.permute(0, 1, 4, 3, 2).reshape(b, num_heads, w, -1)  # (B, h, W, H*c)


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


def sdpa(q, k, v, num_heads: int, axis: str):
    """Axial attention through ``F.scaled_dot_product_attention`` (``scale=1``)."""
    tq = F.normalize(_tokens(q, num_heads, axis), dim=-1)
    tk = F.normalize(_tokens(k, num_heads, axis), dim=-1)
    out = F.scaled_dot_product_attention(tq, tk, _tokens(v, num_heads, axis), scale=1.0)
    return _untokens(out, q.shape, num_heads, axis)


def flex(q, k, v, num_heads: int, axis: str):
    """Axial attention through compiled FlexAttention (``scale=1``)."""
    q, k, v = flex_inputs(q, k, v)
    tq = F.normalize(_tokens(q, num_heads, axis), dim=-1)
    tk = F.normalize(_tokens(k, num_heads, axis), dim=-1)
    out = compiled_flex_attention()(tq, tk, _tokens(v, num_heads, axis), scale=1.0)
    return _untokens(out, q.shape, num_heads, axis)


def _auto(device: torch.device, grad: bool) -> str:
    return "reference" if device.type == "cpu" else "sdpa"


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    axis: str,
    backend: str = "auto",
) -> torch.Tensor:
    """Dispatch axial attention (``axis`` "row" or "col") to a backend.

    Args:
        q, k, v: ``[B, C, H, W]`` maps, ``C`` divisible by ``num_heads``.
        num_heads: heads; each head's token is ``W * C / num_heads`` (rows) long.
        axis: ``"row"`` (tokens are rows) or ``"col"``.
        backend: one of ``auto, reference, sdpa, flex``.

    Returns:
        ``[B, C, H, W]`` attention output (no residual).
    """
    if axis not in ("row", "col"):
        raise ValueError(f"axis must be 'row' or 'col', got '{axis}'.")
    if q.shape[1] % num_heads:
        raise ValueError(
            f"channels {q.shape[1]} not divisible by num_heads={num_heads}; "
            "choose num_heads dividing the channel count."
        )
    grad = needs_grad(q, k, v)
    chosen = resolve_backend(
        "axial attention",
        backend,
        BACKENDS[1:],
        {"flex": flex_unavailable_reason(q.device, grad)},
        lambda: _auto(q.device, grad),
    )
    return {"reference": reference, "sdpa": sdpa, "flex": flex}[chosen](q, k, v, num_heads, axis)
