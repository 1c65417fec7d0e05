"""Window attention with relative-position bias and shifted-window mask (Swin, Liu et al. 2021).

Shapes: ``q, k, v`` are ``[B*nW, heads, N, d]`` with windows of one image contiguous (index
``b * nW + w``); ``bias`` is the gathered relative-position bias ``[heads, N, N]``; ``mask`` is the
additive shift mask ``[nW, N, N]`` (0 where attention is allowed, a large negative value across
regions). The mask is a constant: it never receives a gradient; ``bias`` does.

Backends:
    reference: matmul + softmax, the ground truth; the only path that returns the attention map.
    sdpa: ``F.scaled_dot_product_attention`` with bias and mask folded into ``attn_mask``.
    flex: compiled FlexAttention with a ``score_mod`` that looks the bias and the mask up per
        (window, head, query, key). Two layouts: windows as batch rows (CPU), or all windows packed
        into one sequence with a cached block-diagonal ``BlockMask`` so cross-window blocks are
        skipped (CUDA). CPU: forward only.
    triton: a fused kernel (one program per window and head, forward and recompute backward) for
        CUDA; runs on CPU only under ``TRITON_INTERPRET=1`` for testing.

``return_attn=True`` always materialises the map with the reference path (no fused kernel exposes
it), whatever the backend.

Auto policy (``backend="auto"``; ``DERMSEG_ATTENTION_BACKEND`` overrides it):
    - ``return_attn=True``: reference (the only path with the map).
    - CPU, no grad: sdpa. CPU, grad: reference. Never flex on CPU (no backward; and its forward,
      close to sdpa's, costs a 2-40 s compile per new shape).
    - CUDA: sdpa. Not measured (no GPU here): chosen as torch's maintained fused kernels; select
      ``triton`` or ``flex`` explicitly and measure with ``tools/benchmark.py`` before changing it.

    Measured with ``tools/benchmark.py --kernel window_attention --batch 8`` (torch 2.14.1, one
    thread, load ~2 on a shared 2-core machine), process-CPU ms, forward / forward+backward (q, k,
    v and bias requiring grad), Swin-T at 224, flex after its compile:

    ========== =========== =========== ===============
    stage      reference   sdpa        flex (fwd only)
    ========== =========== =========== ===============
    56, 3 h    25.6 / 56.5 14.7 / 65.6 28.5
    28, 6 h    14.9 / 39.7 10.0 / 43.8 14.2
    14, 12 h    8.2 / 18.3  4.9 / 21.4  5.2
    7, 24 h     1.6 /  7.6  2.4 /  9.5  2.3
    ========== =========== =========== ===============

    With a bias that requires grad, CPU sdpa falls back to its math path (it saves the same
    ``[.., N, N]`` maps as the reference: 41.6 MB at stage 1) and adds overhead, hence reference
    for training. The packed flex layout measured 295 ms vs 26 ms for windows-as-batch at stage 2.
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
    triton_unavailable_reason,
)

BACKENDS = ("auto", "reference", "sdpa", "flex", "triton")
_FLEX_BLOCK = 128
_BLOCK_MASKS: dict[tuple, object] = {}


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_attn: bool = False,
):
    """Plain matmul/softmax window attention: ``out`` or ``(out, attn [B*nW, h, N, N])``."""
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


def sdpa(q, k, v, bias=None, mask=None, scale=None):
    """``F.scaled_dot_product_attention`` with ``bias + mask`` as one additive ``attn_mask``."""
    if mask is None:
        attn_mask = None if bias is None else bias.to(q.dtype).unsqueeze(0)  # (1, h, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    nw = mask.shape[0]
    attn_mask = mask.to(q.dtype)[:, None]  # (nW, 1, N, N)
    if bias is not None:
        attn_mask = attn_mask + bias.to(q.dtype).unsqueeze(0)  # (nW, h, N, N)
    # Broadcasting the per-window mask over images needs the image axis split out (B, nW*h, N, d).
    bnw, h, n, d = q.shape
    if bnw % nw:
        raise ValueError(
            f"window attention: q has {bnw} windows, not a multiple of the mask's {nw} windows per "
            "image; pass q as [B*nW, heads, N, d] with the windows of one image contiguous."
        )
    out = F.scaled_dot_product_attention(
        q.reshape(bnw // nw, nw * h, n, d),
        k.reshape(bnw // nw, nw * h, n, d),
        v.reshape(bnw // nw, nw * h, n, d),
        attn_mask=attn_mask.expand(nw, h, n, n).reshape(1, nw * h, n, n),
        scale=scale,
    )  # (B, nW*h, N, d)
    return out.view(bnw, h, n, d)


def _same_window(n: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx // n) == (kv_idx // n)

    return mask_mod


def window_block_mask(num_windows: int, n: int, device: torch.device):
    """Block-diagonal ``BlockMask`` for ``num_windows`` windows of ``n`` tokens in one sequence.

    Built analytically (no dense ``[L, L]`` mask): query block ``i`` sees the contiguous range of
    key blocks that overlaps the windows it touches. Cached per ``(num_windows, n, device)``: the
    shift lives in the additive mask looked up by ``score_mod``, so one block mask serves the
    shifted and the plain blocks of a stage.
    """
    from torch.nn.attention.flex_attention import BlockMask

    key = (num_windows, n, str(device))
    if key not in _BLOCK_MASKS:
        if len(_BLOCK_MASKS) > 64:
            _BLOCK_MASKS.clear()
        length = num_windows * n
        blocks = -(-length // _FLEX_BLOCK)
        start = torch.arange(blocks) * _FLEX_BLOCK
        end = torch.clamp(start + _FLEX_BLOCK, max=length) - 1
        first_kv = (start // n * n) // _FLEX_BLOCK  # first key block of the first window touched
        last_kv = ((end // n + 1) * n - 1) // _FLEX_BLOCK
        kv_num = (last_kv - first_kv + 1).to(torch.int32)
        kv_idx = torch.clamp(first_kv[:, None] + torch.arange(blocks), max=blocks - 1)
        _BLOCK_MASKS[key] = BlockMask.from_kv_blocks(
            kv_num.view(1, 1, blocks).to(device),
            kv_idx.to(torch.int32).view(1, 1, blocks, blocks).to(device),
            BLOCK_SIZE=_FLEX_BLOCK,
            mask_mod=_same_window(n),
            seq_lengths=(length, length),
        )
    return _BLOCK_MASKS[key]


def _window_score_mod(bias, mask, n: int, packed: bool):
    """``score_mod`` adding ``bias[h, i, j]`` and ``mask[w % nW, i, j]`` for window ``w``.

    Packed layout: token ``i`` of the sequence is token ``i % N`` of window ``i // N``; windows
    layout: the batch index is the window.
    """
    nw = 1 if mask is None else mask.shape[0]

    def add_bias_and_mask(score, b, h, q_idx, kv_idx):
        window = q_idx // n if packed else b
        qn, kn = (q_idx % n, kv_idx % n) if packed else (q_idx, kv_idx)
        if bias is not None:
            score = score + bias[h, qn, kn]
        if mask is not None:
            score = score + mask[window % nw, qn, kn]
        return score

    return add_bias_and_mask


# Measured on CPU (torch 2.14.1, Swin stage 2, B=8): windows 26 ms vs packed 295 ms per forward;
# the CPU flex kernel gains nothing from the block-diagonal sparsity. On CUDA the packed layout
# avoids padding each 49-token window to a 128-token block (not measured here: no GPU).
FLEX_LAYOUT = {"cpu": "windows", "cuda": "packed"}


def flex(q, k, v, bias=None, mask=None, scale=None, layout: str | None = None):
    """Compiled FlexAttention with a bias/mask ``score_mod``.

    Args:
        layout: ``"windows"`` (each window one batch row ``[B*nW, h, N, d]``) or ``"packed"`` (all
            windows in one sequence ``[1, h, B*nW*N, d]`` with the cached block-diagonal
            ``BlockMask``); default per device from :data:`FLEX_LAYOUT`.
    """
    bnw, h, n, d = q.shape
    layout = layout or FLEX_LAYOUT.get(q.device.type, "windows")
    if layout not in ("windows", "packed"):
        raise ValueError(f"flex layout must be 'windows' or 'packed', got '{layout}'.")
    q, k, v = flex_inputs(q, k, v)
    if bias is not None:
        bias = flex_inputs(bias)[0].to(q.dtype)
    if mask is not None:
        mask = mask.to(q.dtype)
    packed = layout == "packed"
    score_mod = None
    if bias is not None or mask is not None:
        score_mod = _window_score_mod(bias, mask, n, packed)
    if not packed:
        return compiled_flex_attention()(q, k, v, score_mod=score_mod, scale=scale)

    def pack(t):
        return t.transpose(0, 1).reshape(1, h, bnw * n, d)  # (1, h, B*nW*N, d)

    out = compiled_flex_attention()(
        pack(q),
        pack(k),
        pack(v),
        score_mod=score_mod,
        block_mask=window_block_mask(bnw, n, q.device),
        scale=scale,
    )
    return out.view(h, bnw, n, d).transpose(0, 1)  # (B*nW, h, N, d)


def triton(q, k, v, bias=None, mask=None, scale=None):
    """Fused Triton window attention (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    from networks.kernels._triton_window import triton_window_attention

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return triton_window_attention(q, k, v, bias, mask, scale)


def _auto(device: torch.device, grad: bool, return_attn: bool) -> str:
    if return_attn:
        return "reference"
    if device.type == "cpu":
        return "reference" if grad else "sdpa"
    return "sdpa"


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
    """Dispatch window attention to a backend (``DERMSEG_ATTENTION_BACKEND`` overrides ``auto``).

    Args:
        q, k, v: ``[B*nW, heads, N, d]``, the windows of one image contiguous.
        bias: gathered relative-position bias ``[heads, N, N]`` (receives a gradient).
        mask: additive shift mask ``[nW, N, N]`` (constant).
        scale: logit scale, default ``d ** -0.5``.
        return_attn: also return the softmax map ``[B*nW, heads, N, N]`` (reference path).
        backend: one of ``auto, reference, sdpa, flex, triton``.

    Returns:
        ``[B*nW, heads, N, d]``, or ``(out, attn)`` when ``return_attn``.
    """
    grad = needs_grad(q, k, v, bias)
    chosen = resolve_backend(
        "window attention",
        backend,
        BACKENDS[1:],
        {
            "flex": flex_unavailable_reason(q.device, grad),
            "triton": triton_unavailable_reason(q.device),
        },
        lambda: _auto(q.device, grad, return_attn),
    )
    if return_attn or chosen == "reference":
        return reference(q, k, v, bias, mask, scale, return_attn)
    return {"sdpa": sdpa, "flex": flex, "triton": triton}[chosen](q, k, v, bias, mask, scale)
