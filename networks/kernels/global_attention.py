"""Global multi-head attention (DiT, SAM ViT) with an optional additive bias.

Shapes: ``q, k, v`` ``[B, heads, N, d]``; ``bias`` broadcastable to ``[B, heads, N, N]`` (e.g.
SAM's decomposed relative-position bias ``[B, heads, N, N]`` or a shared ``[heads, N, N]`` table);
the bias receives a gradient.

Backends:
    reference: matmul + softmax, the ground truth.
    sdpa: ``F.scaled_dot_product_attention`` with the bias as ``attn_mask``.
    flex: compiled FlexAttention with a ``score_mod`` that looks the bias up by ``(b, h, q, kv)``
        (size-1 axes indexed at 0, so a broadcast bias is never expanded). CPU: forward only.
    triton: not implemented for this operation (raises); sdpa already has fused CUDA kernels.

Auto policy (``backend="auto"``; ``DERMSEG_ATTENTION_BACKEND`` overrides it):
    - CPU, no grad: sdpa. CPU, grad: reference. Never flex on CPU (no backward; forward not faster
      than sdpa and a 30-40 s compile per new shape).
    - CUDA: sdpa (torch's fused kernels). Not measured here (no GPU).

    Measured with ``tools/benchmark.py --kernel global --batch 8`` (torch 2.14.1, one thread, CPU
    shared at load ~8, so +-30 %), ms, forward / forward+backward:

    ====================== ============= ============= ===============
    case                   reference     sdpa          flex (fwd only)
    ====================== ============= ============= ===============
    SAM-B windows + bias   572 / 1397    379 / 1249    352
    SAM-B global + bias    174 / 180     54 / 274      168
    SegDT-XS, 1024 tokens  891 / 2147    796 / 2673    1337
    ====================== ============= ============= ===============

    sdpa without a bias saves 5x less memory for backward (32 vs 152 MB for SegDT-XS) but was
    slower here; switch with ``backend="sdpa"`` when memory, not time, is the limit.
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


def reference(q, k, v, bias=None, scale=None):
    """Plain matmul/softmax attention. Returns ``[B, heads, N, d]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


def sdpa(q, k, v, bias=None, scale=None):
    """``F.scaled_dot_product_attention`` with ``bias`` as the additive ``attn_mask``."""
    attn_mask = None if bias is None else bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def _bias_score_mod(bias: torch.Tensor):
    """``score_mod`` adding ``bias[b, h, q, kv]``, indexing broadcast (size-1) axes at 0."""
    bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))  # (B|1, h|1, N|1, N|1)
    per_b, per_h, per_q, per_k = (size != 1 for size in bias.shape)

    def add_bias(score, b, h, q_idx, kv_idx):
        zero = torch.zeros_like(b)
        return (
            score
            + bias[
                b if per_b else zero,
                h if per_h else zero,
                q_idx if per_q else zero,
                kv_idx if per_k else zero,
            ]
        )

    return add_bias


def flex(q, k, v, bias=None, scale=None):
    """Compiled FlexAttention with the bias as a ``score_mod`` lookup."""
    q, k, v = flex_inputs(q, k, v)
    score_mod = None
    if bias is not None:
        score_mod = _bias_score_mod(flex_inputs(bias)[0].to(q.dtype))
    return compiled_flex_attention()(q, k, v, score_mod=score_mod, scale=scale)


def _auto(device: torch.device, grad: bool) -> str:
    if device.type == "cpu":
        return "reference" if grad else "sdpa"
    return "sdpa"


def global_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Dispatch global attention to a backend (``DERMSEG_ATTENTION_BACKEND`` overrides ``auto``).

    Args:
        q, k, v: ``[B, heads, N, d]``.
        bias: additive logits bias broadcastable to ``[B, heads, N, N]``.
        scale: logit scale, default ``d ** -0.5``.
        backend: one of ``auto, reference, sdpa, flex``.

    Returns:
        ``[B, heads, N, d]``.
    """
    if bias is not None and bias.dim() > 4:
        raise ValueError(
            "global attention: bias must broadcast to [B, heads, N, N], "
            f"got shape {tuple(bias.shape)}."
        )
    grad = needs_grad(q, k, v, bias)
    chosen = resolve_backend(
        "global attention",
        backend,
        BACKENDS[1:],
        {"flex": flex_unavailable_reason(q.device, grad)},
        lambda: _auto(q.device, grad),
    )
    return {"reference": reference, "sdpa": sdpa, "flex": flex}[chosen](q, k, v, bias, scale)
