"""Fused Triton window attention: one program per (window, head), whole window in registers.

Swin windows are small (N = 49 for window 7, padded to 64 lanes), so a window's ``q, k, v`` tiles,
its scores and the bias/mask tiles all fit in one program: no online softmax is needed. The forward
stores the log-sum-exp per row; the backward recomputes the probabilities from it
(FlashAttention-style recompute, Dao et al., NeurIPS 2022) instead of saving the ``[B*nW, h, N, N]``
map, and writes ``dS`` per window so the bias gradient is a deterministic sum over windows in torch.

Imported lazily by ``window_attention.py`` (triton is optional). Set ``TRITON_INTERPRET=1`` before
importing triton to run these kernels on CPU tensors for testing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _scores(q_ptr, k_ptr, bias_ptr, mask_ptr, base, window, head, nw, n, scale,
            offs_n, offs_d, d: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
            PRECISION: tl.constexpr):  # fmt: skip
    rows = offs_n[:, None] < n
    io_mask = rows & (offs_d[None, :] < d)
    q = tl.load(q_ptr + base + offs_n[:, None] * d + offs_d[None, :], mask=io_mask, other=0.0)
    k = tl.load(k_ptr + base + offs_n[:, None] * d + offs_d[None, :], mask=io_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (N, N) in fp32
    nn_mask = rows & (offs_n[None, :] < n)
    nn_offs = offs_n[:, None] * n + offs_n[None, :]
    if HAS_BIAS:
        s += tl.load(bias_ptr + head * n * n + nn_offs, mask=nn_mask, other=0.0).to(tl.float32)
    if HAS_MASK:
        s += tl.load(mask_ptr + (window % nw) * n * n + nn_offs, mask=nn_mask, other=0.0).to(
            tl.float32
        )
    # Padded key columns must vanish from the softmax; padded query rows stay finite (never stored).
    return tl.where(offs_n[None, :] < n, s, float("-inf")), q, k


@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, out_ptr, lse_ptr, heads, nw, n, scale,
                    d: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                    PRECISION: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)  # window * heads + head
    window, head = pid // heads, pid % heads
    base = pid * n * d
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    s, q, k = _scores(q_ptr, k_ptr, bias_ptr, mask_ptr, base, window, head, nw, n, scale,
                      offs_n, offs_d, d, HAS_BIAS, HAS_MASK, PRECISION)  # fmt: skip
    row_max = tl.max(s, axis=1)
    p = tl.exp(s - row_max[:, None])
    row_sum = tl.sum(p, axis=1)
    p = p / row_sum[:, None]
    io_mask = (offs_n[:, None] < n) & (offs_d[None, :] < d)
    v = tl.load(v_ptr + base + offs_n[:, None] * d + offs_d[None, :], mask=io_mask, other=0.0)
    out = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    tl.store(out_ptr + base + offs_n[:, None] * d + offs_d[None, :], out.to(v.dtype), mask=io_mask)
    tl.store(lse_ptr + pid * n + offs_n, row_max + tl.log(row_sum), mask=offs_n < n)


@triton.jit
def _backward_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, out_ptr, lse_ptr, dout_ptr,
                     dq_ptr, dk_ptr, dv_ptr, ds_ptr, heads, nw, n, scale,
                     d: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, STORE_DS: tl.constexpr,
                     PRECISION: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    window, head = pid // heads, pid % heads
    base = pid * n * d
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    s, q, k = _scores(q_ptr, k_ptr, bias_ptr, mask_ptr, base, window, head, nw, n, scale,
                      offs_n, offs_d, d, HAS_BIAS, HAS_MASK, PRECISION)  # fmt: skip
    lse = tl.load(lse_ptr + pid * n + offs_n, mask=offs_n < n, other=0.0)
    p = tl.exp(s - lse[:, None])  # recomputed probabilities (N, N)
    io_mask = (offs_n[:, None] < n) & (offs_d[None, :] < d)
    io_offs = base + offs_n[:, None] * d + offs_d[None, :]
    v = tl.load(v_ptr + io_offs, mask=io_mask, other=0.0)
    out = tl.load(out_ptr + io_offs, mask=io_mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + io_offs, mask=io_mask, other=0.0)
    dv = tl.dot(tl.trans(p).to(dout.dtype), dout, input_precision=PRECISION)
    dp = tl.dot(dout, tl.trans(v), input_precision=PRECISION)
    delta = tl.sum(dout.to(tl.float32) * out, axis=1)  # rowsum(dO * O) = rowsum(P * dP)
    ds = p * (dp - delta[:, None])  # gradient of the pre-softmax logits
    ds = tl.where(offs_n[:, None] < n, ds, 0.0)
    dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
    dk = tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION) * scale
    tl.store(dq_ptr + io_offs, dq.to(q.dtype), mask=io_mask)
    tl.store(dk_ptr + io_offs, dk.to(k.dtype), mask=io_mask)
    tl.store(dv_ptr + io_offs, dv.to(v.dtype), mask=io_mask)
    if STORE_DS:
        nn_mask = (offs_n[:, None] < n) & (offs_n[None, :] < n)
        nn_offs = offs_n[:, None] * n + offs_n[None, :]
        tl.store(ds_ptr + pid * n * n + nn_offs, ds, mask=nn_mask)


def _launch_meta(q: torch.Tensor) -> dict:
    n, d = q.shape[-2:]
    # tl.dot needs every tile side >= 16; fp32 stays exact unless the user opted into TF32.
    tf32 = q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and q.is_cuda
    return {
        "d": d,
        "BLOCK_N": max(16, triton.next_power_of_2(n)),
        "BLOCK_D": max(16, triton.next_power_of_2(d)),
        "PRECISION": "tf32" if tf32 else "ieee",
    }


class _TritonWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, mask, scale):
        bnw, heads, n, _ = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        bias_c = bias.contiguous() if bias is not None else q.new_empty(0)
        mask_c = mask.contiguous() if mask is not None else q.new_empty(0)
        nw = mask.shape[0] if mask is not None else 1
        out = torch.empty_like(q)
        lse = torch.empty(bnw, heads, n, device=q.device, dtype=torch.float32)
        meta = _launch_meta(q)
        _forward_kernel[(bnw * heads,)](
            q, k, v, bias_c, mask_c, out, lse, heads, nw, n, scale,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None, **meta,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, bias_c, mask_c, out, lse)
        ctx.scale, ctx.nw = scale, nw
        ctx.has_bias, ctx.has_mask = bias is not None, mask is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias_c, mask_c, out, lse = ctx.saved_tensors
        bnw, heads, n, _ = q.shape
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        store_ds = ctx.has_bias and ctx.needs_input_grad[3]
        ds = torch.empty(bnw, heads, n, n, device=q.device, dtype=torch.float32) if store_ds else dq
        _backward_kernel[(bnw * heads,)](
            q, k, v, bias_c, mask_c, out, lse, dout.contiguous(), dq, dk, dv, ds,
            heads, ctx.nw, n, ctx.scale, HAS_BIAS=ctx.has_bias, HAS_MASK=ctx.has_mask,
            STORE_DS=store_ds, **_launch_meta(q),
        )  # fmt: skip
        dbias = ds.sum(dim=0).to(bias_c.dtype) if store_ds else None
        return dq, dk, dv, dbias, None, None


def triton_window_attention(q, k, v, bias, mask, scale: float) -> torch.Tensor:
    """Fused window attention, shapes as in ``window_attention``: ``[B*nW, heads, N, d]``."""
    if q.shape[-2] > 128:
        raise ValueError(
            f"the Triton window kernel keeps a whole window in registers and supports N <= 128 "
            f"tokens (window <= 11); got N={q.shape[-2]}. Use backend 'sdpa' or 'flex' for "
            "larger windows."
        )
    return _TritonWindowAttention.apply(q, k, v, bias, mask, scale)
