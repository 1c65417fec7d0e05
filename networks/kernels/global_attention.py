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
    - CPU, no grad: sdpa. CPU, grad with a bias: reference. CPU, grad without a bias: sdpa (its
      fused CPU kernel then runs, saving 5x less memory). Never flex on CPU (no backward; its
      forward wins only for long sequences and costs a compile per new shape).
    - CUDA: sdpa (torch's fused kernels). Not measured here (no GPU).

    Measured with ``tools/benchmark.py --kernel global --batch 8`` (torch 2.14.1, one thread, load
    ~2 on a shared 2-core machine), process-CPU ms, forward / forward+backward, saved MB:

    ====================== ================== ================== ===============
    case                   reference          sdpa               flex (fwd only)
    ====================== ================== ================== ===============
    SAM-B windows + bias   68 / 189, 111 MB   60 / 211, 111 MB   67
    SAM-B global + bias    28 / 77, 42 MB     23 / 86, 42 MB     27
    SegDT-XS, 1024 tokens  126 / 399, 152 MB  124 / 374, 32 MB   114
    ====================== ================== ================== ===============

    With a bias requiring grad, CPU sdpa takes its math path (same saved maps as the reference).
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


def _auto(device: torch.device, grad: bool, has_bias: bool) -> str:
    if device.type == "cpu" and grad and has_bias:
        return "reference"
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
        lambda: _auto(q.device, grad, bias is not None),
    )
    return {"reference": reference, "sdpa": sdpa, "flex": flex}[chosen](q, k, v, bias, scale)
