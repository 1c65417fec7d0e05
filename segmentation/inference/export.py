"""Export a checkpoint's network to ONNX or TorchScript and check it against PyTorch.

The exported graph is ``image float32 [B, 3, H, W]`` (ImageNet-normalised, as in evaluation) ->
``logits [B, K, H, W]``; the preprocessing is written next to the file (``FILE.json``) so a
deployment outside Python can reproduce it. Export steps:

1. Rebuild the network with ``attention_backend="reference"`` when it takes that argument: the
   plain-PyTorch attention path traces into standard operators, while fused backends (flex,
   Triton) do not export. Weights are the same.
2. Trace with a dynamic batch and a dynamic image size (ONNX: the TorchScript-based exporter
   with ``dynamic_axes``, since the dynamo exporter needs ``onnxscript``; TorchScript:
   ``torch.jit.trace``).
3. Compare with PyTorch on random inputs at the training size (batch 1, 2 and 3) and at a second,
   larger size. Networks whose shape arithmetic is frozen into the trace (Swin windows: the
   partition reshapes record Python ints) disagree at the second size; they are re-exported with a
   fixed image size, which ONNX Runtime enforces and a scripted guard enforces for TorchScript,
   instead of silently returning wrong logits.
4. Fail when any max |exported - PyTorch| exceeds the tolerance (default 1e-4).

Networks with a ``predict`` method (SegDT: an Euler sampling loop with a seeded
``torch.Generator``; the SAM adapters, whose prompts are made at prediction time) are refused:
their evaluation path is not ``forward`` alone.

Verified (tiny variants, 64x64 trace, batch 1/2/3 and 96x128, ``tests/test_inference.py`` and a
sweep over the registry): ``unet_tiny``, ``smp_unet_tiny``, ``mcanet_tiny``, ``iscf_tiny``,
``transdae_tiny`` export with dynamic batch and image size (ONNX max |diff| <= 3.2e-5,
TorchScript 0); ``swin_unet_tiny``, ``att_swinunet_tiny`` with dynamic batch and a fixed image
size (ONNX <= 2.8e-6, TorchScript 0). ``segdt*``, ``sam_adapter*``, ``sam2_adapter*`` and
``medsam_ca*`` are refused.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import networks
from segmentation.checkpoint import load_weights, unwrap
from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segmentation.errors import ConfigError

__all__ = ["FORMATS", "ExportError", "export_checkpoint", "exportable_model", "load_exported"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17  # LayerNormalization is a single operator from opset 17


class ExportError(RuntimeError):
    """The network cannot be exported, or the exported graph disagrees with PyTorch."""


def exportable_model(ckpt: dict[str, Any]) -> nn.Module:
    """The checkpoint's network in eval mode, with the reference attention path when configurable.

    Raises:
        ExportError: the network evaluates through ``predict`` (generative sampling), which an
            exported ``forward`` would not reproduce.
    """
    spec = ckpt["model_spec"]
    target, _ = networks.NETWORKS.get(spec["name"])
    kwargs = dict(spec["kwargs"])
    if "attention_backend" in inspect.signature(target).parameters:
        kwargs["attention_backend"] = "reference"
    model = networks.build_network(spec["name"], **kwargs)
    load_weights(model, ckpt["model"], source=f"checkpoint ({spec['name']})")
    if hasattr(unwrap(model), "predict"):
        raise ExportError(
            f"'{spec['name']}' predicts through predict() (SegDT: a sampling loop with a seeded "
            "torch.Generator; SAM adapters: prompts derived at prediction time), which an "
            "exported forward() would not reproduce; export supports networks whose forward() is "
            "the prediction. Use tools/predict.py for this network."
        )
    return model.eval()


class _FixedSizeGuard(nn.Module):
    """Scripted wrapper that rejects image sizes a traced network was not traced for."""

    def __init__(self, traced: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.traced, self.height, self.width = traced, height, width

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] != self.height or image.shape[-1] != self.width:
            raise RuntimeError(
                f"this export accepts images of {self.height}x{self.width} (HxW) only: resize the "
                "input (the network's shape arithmetic was frozen when it was traced)."
            )
        return self.traced(image)


@contextmanager
def _quiet():
    """Silence tracer warnings (the parity check measures what they warn about) and torch.jit's
    deprecation notices (TorchScript still loads in C++ LibTorch, which is why it is offered)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r".*torch\.jit.*deprecated", FutureWarning)
        # the dynamo exporter needs onnxscript (not installed): the legacy exporter is deliberate
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", r".*legacy TorchScript-based ONNX", DeprecationWarning)
        yield


def _export(model: nn.Module, fmt: str, path: Path, example: torch.Tensor, dynamic_size: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        _trace_and_save(model, fmt, path, example, dynamic_size)


def _trace_and_save(model, fmt, path, example, dynamic_size):
    if fmt == "onnx":
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=ONNX_OPSET,
        )
        return
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
    if not dynamic_size:
        traced = torch.jit.script(_FixedSizeGuard(traced, *example.shape[-2:]))
    torch.jit.save(traced, str(path))


def load_exported(fmt: str, path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """``image float32 [B, 3, H, W] -> logits`` through ONNX Runtime (CPU) or a TorchScript load."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x})[0]
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def _parity(model, runner, shapes, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = runner(x.numpy())
        if got.shape != expected.shape:
            diffs["x".join(map(str, shape))] = float("inf")
            continue
        diffs["x".join(map(str, shape))] = float(np.abs(got - expected).max())
    return diffs


def export_checkpoint(
    ckpt: dict[str, Any],
    fmt: str,
    out: str | Path,
    *,
    image_size: int | None = None,
    tolerance: float = 1.0e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``ckpt``'s network to ``out`` and check it; writes ``out`` + ``.json`` metadata.

    Args:
        ckpt: a loaded dermseg checkpoint.
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: output file.
        image_size: trace size; default the training ``data.image_size`` of the config (else 64).
        tolerance: largest accepted max |exported - PyTorch| over the sample inputs.
        seed: seed of the random sample inputs.

    Returns:
        The metadata dict (network, format, input/output names, dynamic axes, normalisation,
        ``max_abs_diff`` per input shape, tolerance).

    Raises:
        ConfigError: the network does not accept ``image_size`` (the message says which sizes do).
        ExportError: unsupported network, unknown format, tracing failure, or a parity failure.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {FORMATS}.")
    out = Path(out)
    model = exportable_model(ckpt)
    size = image_size or ckpt["config"]["data"].get("image_size") or 64
    channels = ckpt["model_spec"]["kwargs"].get("in_channels", 3)
    example = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))
    batch_shapes = [(b, channels, size, size) for b in (1, 2, 3)]
    other = (1, channels, size + 32, size + 64)  # non-square; multiple of 32 beyond the size
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size))
    except ValueError as err:  # check_input_shape: the network rejects the trace size itself
        raise ConfigError(
            f"image size {size} does not fit '{ckpt['model_spec']['name']}' (the size, not the "
            f"{fmt} exporter, is the problem): {err} Pass --image-size with a size it accepts."
        ) from None
    try:
        with torch.no_grad():
            model(torch.zeros(other))
        size_is_free = True
    except (ValueError, RuntimeError):  # check_input_shape: the network itself fixes the size
        size_is_free = False
    try:
        _export(model, fmt, out, example, dynamic_size=size_is_free)
        runner = load_exported(fmt, out)
        diffs = _parity(model, runner, batch_shapes + ([other] if size_is_free else []), seed)
        size_diff = diffs.get("x".join(map(str, other)))
        dynamic_size = size_is_free and size_diff <= tolerance
        if size_is_free and not dynamic_size:
            _export(model, fmt, out, example, dynamic_size=False)
            runner = load_exported(fmt, out)
            diffs = _parity(model, runner, batch_shapes, seed)
    except ExportError:
        raise
    except Exception as err:  # tracer/exporter/runtime failures come in many types
        raise ExportError(
            f"exporting '{ckpt['model_spec']['name']}' to {fmt} failed "
            f"({type(err).__name__}: {str(err)[:500]}); the network uses an operation the "
            f"{fmt} tracer does not support. Try the other format."
        ) from err
    meta = {
        "network": ckpt["model_spec"]["name"],
        "model_kwargs": ckpt["model_spec"]["kwargs"],
        "step": ckpt.get("step"),
        "format": fmt,
        "input": "image float32 [B, C, H, W]: RGB / 255, then ImageNet mean/std normalised",
        "output": "logits float32 [batch, num_classes, height, width]; sigmoid > 0.5 = lesion",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "trace_size": [size, size],
        "dynamic_batch": True,
        "dynamic_size": dynamic_size,
        # why the size is fixed: the network rejects other sizes (None) or the trace froze them
        "other_size_diff": size_diff if size_is_free else None,
        "max_abs_diff": diffs,
        "tolerance": tolerance,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
    }
    Path(f"{out}.json").write_text(json.dumps(meta, indent=2))
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ExportError(
            f"{fmt} export of '{meta['network']}' differs from PyTorch by {worst:.3g} > "
            f"tolerance {tolerance:g} (per shape: {diffs}); the file is kept at '{out}' for "
            "inspection. Raise --tolerance only if the difference is understood."
        )
    return meta
