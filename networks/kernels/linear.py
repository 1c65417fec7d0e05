"""oneDNN-backed ``nn.Linear`` for CPU transformer blocks, and ``convert_linear`` to swap it in.

``torch.ops.mkldnn._linear_pointwise`` (the op Inductor emits for CPU linears) runs a oneDNN
inner-product primitive; in eager fp32 it is faster than ``F.linear`` at transformer shapes on
the CPUs measured here (Linear+GELU+Linear MLP, one thread: forward 1.4-2.1x, forward+backward
1.3-1.6x at Swin-T stage widths and tokens, batch 8; Swin-Unet 224, batch 8: training step 1.32x
and inference 1.76x less process CPU time, ``tools/benchmark.py --model swin_unet --ablate``).
It has no autograd formula, so :class:`_OneDNNLinearFunction` supplies the backward (the input
gradient through oneDNN too). The op is private: it is used only behind a version and
availability check, and every other case (CUDA, non-fp32, autocast, tracing under
``torch.compile``, missing op) falls back to ``F.linear`` with identical results.

Example:
    >>> model = convert_linear(model)  # exact nn.Linear -> OneDNNLinear, same state_dict
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.kernels._common import torch_at_least


def _find_op():
    if not torch_at_least((2, 1)) or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LINEAR_POINTWISE = _find_op()


def onednn_available() -> bool:
    """True when this torch build exposes the oneDNN linear op."""
    return _LINEAR_POINTWISE is not None


class _OneDNNLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` through oneDNN; ``dX`` through oneDNN, ``dW`` and ``db`` as matmul/sum."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])  # (tokens, out)
        if ctx.needs_input_grad[0]:
            # dX = dY W is itself a linear with weight W^T: oneDNN measured ~2x faster than the
            # matmul at Swin shapes (25088x384 @ 384x96: 30 vs 75 ms on one core).
            grad_x = _LINEAR_POINTWISE(grad_out, weight.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_w = grad_2d.t() @ x.reshape(-1, x.shape[-1])  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(dim=0)
        return grad_x, grad_w, grad_b


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.shape[-1] == weight.shape[1]  # else F.linear raises its familiar shape error
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear`` (``x [..., in]``, ``weight [out, in]``) through oneDNN when it applies."""
    if _use_onednn(x, weight):
        return _OneDNNLinearFunction.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """Drop-in ``nn.Linear`` whose CPU fp32 forward runs through oneDNN; same state_dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features] -> [..., out_features]``."""
        return onednn_linear(x, self.weight, self.bias)


def convert_linear(model: nn.Module) -> nn.Module:
    """Turn every exact ``nn.Linear`` of ``model`` into :class:`OneDNNLinear`, in place.

    Only the class changes (parameters, hooks and state_dict keys stay), so optimizers built before
    the call still hold the right tensors. Subclasses of ``nn.Linear`` (LoRA layers,
    quantisation stubs) keep their own forward. Returns ``model`` for chaining.
    """
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
    return model
