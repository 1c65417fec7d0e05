"""Attention kernels: every backend that runs here against ``reference``; dispatcher errors.

Flex logic (score_mod, layouts, block masks) is checked fast with eager ``flex_attention`` (same
semantics, no compile); the compiled path has one quick test here and the rest marked ``slow``.
The Triton kernel runs under ``TRITON_INTERPRET=1`` in a subprocess (the variable must be set
before triton is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from networks.kernels import _common, axial_attention, global_attention, window_attention
from networks.kernels._common import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
TOL = {"atol": 1e-5, "rtol": 1e-5}

# (windows in the batch, windows per image, heads, tokens per window, head dim). 5 windows of 9
# tokens = 45 tokens and 3 of 49 = 147 tokens: neither fills nor aligns to a 128-token flex block.
WINDOW_SHAPES = [(4, 2, 2, 9, 8), (5, 5, 1, 9, 16), (3, 3, 2, 49, 32)]


@pytest.fixture
def eager_flex(monkeypatch):
    """Run the flex backends through eager flex_attention (identical semantics, no compile)."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(_common, "_compiled_flex", flex_attention)


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def window_inputs(bnw, nw, heads, n, d, shift, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(bnw, heads, n, d, generator=gen) for _ in range(3))
    bias = torch.randn(heads, n, n, generator=gen)
    mask = None
    if shift:
        # Region-style mask like Swin's: -100 across regions, the diagonal always allowed.
        mask = (torch.rand(nw, n, n, generator=gen) > 0.6).float() * -100.0
        mask = mask * (1 - torch.eye(n))
    tensors = [t.requires_grad_(grad) for t in (q, k, v, bias)]
    return (*tensors, mask)


def grads(out, inputs, seed=1):
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * weight).sum(), inputs)


@pytest.mark.parametrize("shape", WINDOW_SHAPES)
@pytest.mark.parametrize("shift", [False, True])
def test_window_sdpa_matches_reference_with_gradients(shape, shift):
    q, k, v, bias, mask = window_inputs(*shape, shift, grad=True)
    ref = window_attention.reference(q, k, v, bias, mask)
    out = window_attention.window_attention(q, k, v, bias=bias, mask=mask, backend="sdpa")
    torch.testing.assert_close(out, ref, **TOL)
    for name, got, want in zip(
        "qkv" + "b", grads(out, (q, k, v, bias)), grads(ref, (q, k, v, bias)), strict=True
    ):
        torch.testing.assert_close(got, want, **TOL, msg=f"gradient of {name} differs")


@pytest.mark.parametrize("layout", ["windows", "packed"])
@pytest.mark.parametrize("shape", WINDOW_SHAPES)
@pytest.mark.parametrize("shift", [False, True])
def test_window_flex_logic_matches_reference(eager_flex, layout, shape, shift):
    q, k, v, bias, mask = window_inputs(*shape, shift)
    with torch.no_grad():
        out = window_attention.flex(q, k, v, bias, mask, layout=layout)
    torch.testing.assert_close(out, window_attention.reference(q, k, v, bias, mask), **TOL)


@pytest.mark.parametrize("num_windows,n", [(5, 9), (3, 49), (40, 49), (1, 49)])
def test_window_block_mask_matches_dense_block_structure(num_windows, n):
    block = window_attention._FLEX_BLOCK
    block_mask = window_attention.window_block_mask(num_windows, n, torch.device("cpu"))
    length = num_windows * n
    tokens = torch.arange(-(-length // block) * block)
    same = (tokens[:, None] // n == tokens[None, :] // n) & (tokens[None, :] < length)
    same &= tokens[:, None] < length
    blocks = len(tokens) // block
    expected = same.view(blocks, block, blocks, block).any(dim=3).any(dim=1)
    assert torch.equal(block_mask.to_dense()[0, 0].bool(), expected)


def test_window_flex_compiled_forward_quick():
    """One deliberate compile of the CPU flex path (small shape, shifted windows)."""
    q, k, v, bias, mask = window_inputs(4, 2, 2, 9, 8, shift=True)
    with torch.no_grad():
        out = window_attention.window_attention(q, k, v, bias=bias, mask=mask, backend="flex")
    torch.testing.assert_close(out, window_attention.reference(q, k, v, bias, mask), **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["windows", "packed"])
@pytest.mark.parametrize("shape", WINDOW_SHAPES[1:])
@pytest.mark.parametrize("shift", [False, True])
def test_window_flex_compiled_matches_reference(layout, shape, shift):
    q, k, v, bias, mask = window_inputs(*shape, shift)
    with torch.no_grad():
        out = window_attention.flex(q, k, v, bias, mask, layout=layout)
    torch.testing.assert_close(out, window_attention.reference(q, k, v, bias, mask), **TOL)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex", "auto"])
@pytest.mark.parametrize("shift", [False, True])
def test_window_return_attn_map_matches_reference(eager_flex, backend, shift):
    q, k, v, bias, mask = window_inputs(4, 2, 2, 9, 8, shift)
    ref_out, ref_attn = window_attention.reference(q, k, v, bias, mask, return_attn=True)
    with torch.no_grad():
        out, attn = window_attention.window_attention(
            q, k, v, bias=bias, mask=mask, return_attn=True, backend=backend
        )
    assert attn.shape == (4, 2, 9, 9)
    torch.testing.assert_close(attn, ref_attn, **TOL)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 2, 9), **TOL)


TRITON_SCRIPT = textwrap.dedent(
    """
    import torch
    from networks.kernels import window_attention as wa
    torch.manual_seed(0)
    for bnw, nw, h, n, d, shift, use_bias in [
        (4, 2, 2, 9, 8, True, True), (3, 3, 1, 49, 32, False, True), (2, 1, 2, 16, 16, True, False)
    ]:
        q, k, v = (torch.randn(bnw, h, n, d, requires_grad=True) for _ in range(3))
        bias = torch.randn(h, n, n, requires_grad=True) if use_bias else None
        mask = (torch.rand(nw, n, n) > 0.6).float() * -100.0 * (1 - torch.eye(n)) if shift else None
        out = wa.window_attention(q, k, v, bias=bias, mask=mask, backend="triton")
        ref = wa.reference(q, k, v, bias, mask)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        inputs = [t for t in (q, k, v, bias) if t is not None]
        g = torch.randn_like(out)
        pairs = zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g))
        for got, want in pairs:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    print("TRITON_OK")
    """
)


def test_triton_window_kernel_forward_backward_interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop(ENV_VAR, None)
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "TRITON_OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["sdpa", "flex", "triton"])
@pytest.mark.parametrize("shift", [False, True])
def test_window_cuda_gradients_match_reference(backend, shift):
    q, k, v, bias, mask = (
        None if t is None else t.detach().cuda().requires_grad_(t.requires_grad)
        for t in window_inputs(8, 4, 3, 49, 32, shift, grad=True)
    )
    ref = window_attention.reference(q, k, v, bias, mask)
    out = window_attention.window_attention(q, k, v, bias=bias, mask=mask, backend=backend)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads(out, (q, k, v, bias)), grads(ref, (q, k, v, bias)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- global attention

BIAS_SHAPES = [None, (2, 12, 12), (3, 1, 12, 12), (1, 2, 12, 12), (3, 2, 12, 12)]


def global_inputs(bias_shape, grad=False):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 12, 8, generator=gen).requires_grad_(grad) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=gen)
    return q, k, v, None if bias is None else bias.requires_grad_(grad)


@pytest.mark.parametrize("bias_shape", BIAS_SHAPES)
def test_global_sdpa_matches_reference_with_gradients(bias_shape):
    q, k, v, bias = global_inputs(bias_shape, grad=True)
    ref = global_attention.reference(q, k, v, bias, scale=0.3)
    out = global_attention.global_attention(q, k, v, bias=bias, scale=0.3, backend="sdpa")
    torch.testing.assert_close(out, ref, **TOL)
    inputs = [t for t in (q, k, v, bias) if t is not None]
    for got, want in zip(grads(out, inputs), grads(ref, inputs), strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("bias_shape", BIAS_SHAPES)
def test_global_flex_logic_matches_reference(eager_flex, bias_shape):
    q, k, v, bias = global_inputs(bias_shape)
    with torch.no_grad():
        out = global_attention.global_attention(q, k, v, bias=bias, backend="flex")
    torch.testing.assert_close(out, global_attention.reference(q, k, v, bias), **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("bias_shape", [None, (2, 12, 12), (3, 2, 12, 12)])
def test_global_flex_compiled_matches_reference(bias_shape):
    q, k, v, bias = global_inputs(bias_shape)
    with torch.no_grad():
        out = global_attention.global_attention(q, k, v, bias=bias, backend="flex")
    torch.testing.assert_close(out, global_attention.reference(q, k, v, bias), **TOL)


# ----------------------------------------------------------------------------- axial attention


def axial_inputs(grad=False):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, 8, 5, 7, generator=gen).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("axis", ["row", "col"])
def test_axial_sdpa_matches_reference_with_gradients(axis):
    q, k, v = axial_inputs(grad=True)
    ref = axial_attention.reference(q, k, v, 4, axis)
    out = axial_attention.axial_attention(q, k, v, num_heads=4, axis=axis, backend="sdpa")
    torch.testing.assert_close(out, ref, **TOL)
    for got, want in zip(grads(out, (q, k, v)), grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("axis", ["row", "col"])
def test_axial_flex_logic_matches_reference(eager_flex, axis):
    q, k, v = axial_inputs()
    with torch.no_grad():
        out = axial_attention.axial_attention(q, k, v, num_heads=4, axis=axis, backend="flex")
    torch.testing.assert_close(out, axial_attention.reference(q, k, v, 4, axis), **TOL)


@pytest.mark.slow
def test_axial_flex_compiled_matches_reference():
    q, k, v = axial_inputs()
    with torch.no_grad():
        out = axial_attention.axial_attention(q, k, v, num_heads=4, axis="row", backend="flex")
    torch.testing.assert_close(out, axial_attention.reference(q, k, v, 4, "row"), **TOL)


# ----------------------------------------------------------------------------- dispatchers


def call(op, backend, grad=False):
    if op == "window":
        q, k, v, bias, mask = window_inputs(4, 2, 2, 9, 8, True, grad=grad)
        return window_attention.window_attention(q, k, v, bias=bias, mask=mask, backend=backend)
    if op == "global":
        q, k, v, bias = global_inputs((2, 12, 12), grad=grad)
        return global_attention.global_attention(q, k, v, bias=bias, backend=backend)
    q, k, v = axial_inputs(grad=grad)
    return axial_attention.axial_attention(q, k, v, num_heads=4, axis="row", backend=backend)


@pytest.mark.parametrize("op", ["window", "global", "axial"])
def test_unknown_backend_lists_choices(op):
    with pytest.raises(ValueError, match=r"unknown backend 'fused'.*choose one of"):
        call(op, "fused")


@pytest.mark.parametrize("op", ["window", "global", "axial"])
def test_env_override_is_validated_and_named(monkeypatch, op):
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"unknown backend 'fast' \\(from the {ENV_VAR}"):
        call(op, "auto")


@pytest.mark.parametrize("op", ["window", "global", "axial"])
def test_env_override_selects_backend(monkeypatch, op):
    module = {"window": window_attention, "global": global_attention, "axial": axial_attention}
    calls = []
    original = module[op].sdpa
    monkeypatch.setattr(module[op], "sdpa", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setenv(ENV_VAR, "sdpa")
    call(op, "auto")
    call(op, "reference")  # an explicit backend wins over the environment
    assert calls == [1]


def test_triton_on_cpu_raises_clear_error():
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        call("window", "triton")


@pytest.mark.parametrize("op", ["global", "axial"])
def test_triton_not_implemented_for_op(op):
    with pytest.raises(ValueError, match="'triton'.*not implemented for this operation"):
        call(op, "triton")


@pytest.mark.parametrize("op", ["window", "global", "axial"])
def test_flex_with_grad_on_cpu_raises_clear_error(op):
    with pytest.raises(RuntimeError, match="no CPU backward.*torch.no_grad"):
        call(op, "flex", grad=True)


@pytest.mark.parametrize("op", ["window", "global", "axial"])
@pytest.mark.parametrize("grad", [False, True])
def test_auto_never_picks_flex_or_triton_on_cpu(monkeypatch, op, grad):
    module = {"window": window_attention, "global": global_attention, "axial": axial_attention}

    def forbidden(*args, **kwargs):
        raise AssertionError("auto picked a backend that must not run here")

    monkeypatch.setattr(module[op], "flex", forbidden)
    if op == "window":
        monkeypatch.setattr(module[op], "triton", forbidden)
    out = call(op, "auto", grad=grad)
    assert out.requires_grad == grad


def test_window_mask_batch_mismatch_raises():
    q, k, v, bias, mask = window_inputs(3, 2, 2, 9, 8, shift=False)
    mask = torch.zeros(2, 9, 9)
    with pytest.raises(ValueError, match="not a multiple of the mask's 2 windows"):
        window_attention.window_attention(q, k, v, bias=bias, mask=mask, backend="sdpa")


def test_axial_bad_heads_raises():
    q, k, v = axial_inputs()
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        axial_attention.axial_attention(q, k, v, num_heads=3, axis="row")


# ----------------------------------------------------------------------------- oneDNN linear

from networks.kernels.linear import OneDNNLinear, convert_linear, onednn_available  # noqa: E402

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch build lacks the oneDNN op")


def linear_stack(bias=True):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32, bias=bias), torch.nn.GELU(), torch.nn.Linear(32, 8, bias=bias)
    )


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 16), (2, 7, 16), (2, 3, 4, 16)])
def test_onednn_linear_matches_nn_linear_with_gradients(bias, shape):
    plain, fast = linear_stack(bias), convert_linear(linear_stack(bias))
    assert all(isinstance(m, OneDNNLinear) for m in (fast[0], fast[2]))
    x = torch.randn(*shape)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = plain(xa), fast(xb)
    torch.testing.assert_close(out_b, out_a, **TOL)
    weight = torch.randn(out_a.shape)
    (out_a * weight).sum().backward()
    (out_b * weight).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, **TOL)
    for (name, pa), pb in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, **TOL, msg=f"gradient of {name} differs")


def test_convert_linear_keeps_state_dict_and_skips_subclasses():
    class LoRALinear(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(linear_stack(), LoRALinear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert convert_linear(model) is model
    assert type(model[0][0]) is OneDNNLinear and type(model[1]) is LoRALinear
    assert [id(p) for p in model.parameters()] == params
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_onednn_linear_falls_back_for_float64_and_autocast():
    fast = convert_linear(linear_stack()).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(fast(x), linear_stack().double()(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert convert_linear(linear_stack())(torch.randn(3, 16)).dtype == torch.bfloat16


def test_auto_policy_follows_the_documented_measurements():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert window_attention._auto(cpu, True, False) == "reference"
    assert window_attention._auto(cpu, False, False) == "sdpa"
    assert window_attention._auto(cpu, False, True) == "reference"
    assert window_attention._auto(cuda, True, True) == "reference"
    assert window_attention._auto(cuda, True, False) == "sdpa"
    assert global_attention._auto(cpu, True, True) == "reference"
    assert global_attention._auto(cpu, True, False) == "sdpa"
    assert global_attention._auto(cpu, False, True) == "sdpa"
    assert global_attention._auto(cuda, True, True) == "sdpa"
    assert axial_attention._auto(cpu, False) == "reference"
    assert axial_attention._auto(cuda, True) == "sdpa"


@needs_onednn
def test_onednn_linear_non_contiguous_input_and_expanded_gradient():
    plain = torch.nn.Linear(16, 8)
    fast = convert_linear(torch.nn.Linear(16, 8))
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 16, 6).transpose(1, 2)  # (4, 6, 16), not contiguous
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = plain(xa), fast(xb)
    torch.testing.assert_close(out_b, out_a, **TOL)
    out_a.sum().backward()  # sum's backward hands an expanded (stride-0) gradient
    out_b.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, **TOL)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, **TOL)


def test_onednn_linear_shape_error_is_the_usual_one():
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        convert_linear(torch.nn.Linear(16, 8))(torch.randn(3, 12))
