"""Reusable benchmarking: timing loops, attention-kernel cases and model step measurements.

``tools/benchmark.py`` is the CLI over this module. Model comparisons run every configuration in its
own fresh subprocess (``python -m segmentation.benchmark.timing --child ...``) because two of the
settings are process-wide and cannot be undone in a running process: glibc reads the malloc
variables only at start-up, and a model converted to oneDNN linears or compiled keeps caches. A
fresh process per configuration with the same threads, seed, model, input and timing loop is the
honest comparison; the parent only collects the JSON each child prints.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from segmentation.runtime import MALLOC_ENV, MARKER, OPT_OUT, malloc_env_active

REPO_ROOT = Path(__file__).resolve().parents[2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable[[], object], *, device: torch.device, warmup: int = 2, repeat: int = 10
) -> dict[str, float]:
    """Wall and process-CPU time of ``fn()`` in ms (median, min) after ``warmup`` untimed calls.

    On a CPU shared with other jobs, wall time includes the time the process waited for a core;
    process CPU time (user + system, so page faults count) does not. With one thread the two agree
    on an idle machine, so ``cpu_median_ms`` is the steadier estimate under contention.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {
        "median_ms": statistics.median(wall),
        "min_ms": min(wall),
        "cpu_median_ms": statistics.median(cpu),
        "repeat": repeat,
    }


def saved_for_backward_mb(fn: Callable[[], object]) -> float:
    """Megabytes of distinct tensor storage autograd saves for backward while ``fn()`` runs.

    On CPU there is no resettable allocator high-water mark; the memory held for backward is what
    the attention backends differ in (the reference path keeps the ``[.., N, N]`` maps).
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def cuda_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before, in MB."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Fixed-width text table of ``rows`` (floats with 2 decimals, missing values as ``-``)."""

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- attention kernels

# Cases per operation. Swin-T stages at 224 with window 7 (the 7x7 stage has no shift); SAM
# ViT-B at 256 input (16x16 tokens: 4 padded 14x14 windows, one global block with decomposed
# rel-pos bias); SegDT DiT-XS at 256 (32x32 tokens); MCANet-T's MCA block at 224 (56x56 map,
# 64 channels, 8 heads).
KERNEL_CASES: dict[str, list[dict]] = {
    "window_attention": [
        {"case": "swin_t_s1", "side": 56, "window": 7, "heads": 3, "dim": 32, "shift": True},
        {"case": "swin_t_s2", "side": 28, "window": 7, "heads": 6, "dim": 32, "shift": True},
        {"case": "swin_t_s3", "side": 14, "window": 7, "heads": 12, "dim": 32, "shift": True},
        {"case": "swin_t_s4", "side": 7, "window": 7, "heads": 24, "dim": 32, "shift": False},
    ],
    "global": [
        {
            "case": "sam_b_window",
            "batch_mult": 4,
            "tokens": 196,
            "heads": 12,
            "dim": 64,
            "bias": True,
        },
        {
            "case": "sam_b_global",
            "batch_mult": 1,
            "tokens": 256,
            "heads": 12,
            "dim": 64,
            "bias": True,
        },
        {"case": "segdt_xs", "batch_mult": 1, "tokens": 1024, "heads": 4, "dim": 64, "bias": False},
    ],
    "axial": [
        {"case": "mcanet_t_row", "side": 56, "channels": 64, "heads": 8, "axis": "row"},
        {"case": "mcanet_t_col", "side": 56, "channels": 64, "heads": 8, "axis": "col"},
    ],
}


def _kernel_inputs(op: str, case: dict, batch: int, device: torch.device):
    """Random inputs and a ``run(backend)`` closure for one kernel case."""
    from networks.kernels import axial_attention, global_attention, window_attention

    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    if op == "window_attention":
        n = case["window"] ** 2
        nw = (case["side"] // case["window"]) ** 2
        q, k, v = (rand(batch * nw, case["heads"], n, case["dim"]) for _ in range(3))
        bias = rand(case["heads"], n, n)
        mask = None
        if case["shift"]:
            mask = (torch.rand(nw, n, n, generator=gen) > 0.7).float().to(device) * -100.0
        shape = f"{tuple(q.shape)} nW={nw}" + (" shift" if mask is not None else "")
        tensors = [q, k, v, bias]

        def run(backend):
            return window_attention.window_attention(q, k, v, bias=bias, mask=mask, backend=backend)

    elif op == "global":
        b = batch * case["batch_mult"]
        q, k, v = (rand(b, case["heads"], case["tokens"], case["dim"]) for _ in range(3))
        tokens = case["tokens"]
        bias = rand(b, case["heads"], tokens, tokens) if case["bias"] else None
        shape = f"{tuple(q.shape)}" + (" bias" if bias is not None else "")
        tensors = [t for t in (q, k, v, bias) if t is not None]

        def run(backend):
            return global_attention.global_attention(q, k, v, bias=bias, backend=backend)

    else:
        q, k, v = (rand(batch, case["channels"], case["side"], case["side"]) for _ in range(3))
        shape = f"{tuple(q.shape)} {case['axis']}"
        tensors = [q, k, v]

        def run(backend):
            return axial_attention.axial_attention(
                q, k, v, num_heads=case["heads"], axis=case["axis"], backend=backend
            )

    return shape, tensors, run


def _measure_backend(run, backend: str, tensors, dev, warmup: int, repeat: int) -> dict:
    """Time one backend: first call (compile), forward, forward+backward, memory."""
    row: dict = {}
    try:
        start = time.perf_counter()
        with torch.no_grad():
            run(backend)
        row["first_call_s"] = time.perf_counter() - start
    except (ValueError, RuntimeError) as error:
        message = str(error)
        row["note"] = "not implemented" if "not implemented" in message else message[-48:]
        row["note"] = (
            message.split("cannot run: ")[-1][:48] if "cannot run" in message else row["note"]
        )
        return row
    with torch.no_grad():
        forward = time_callable(lambda: run(backend), device=dev, warmup=warmup, repeat=repeat)
    row["fwd_ms"], row["fwd_cpu_ms"] = forward["median_ms"], forward["cpu_median_ms"]
    for t in tensors:
        t.requires_grad_(True)

    def fwd_bwd():
        for t in tensors:
            t.grad = None
        run(backend).sum().backward()

    try:
        both = time_callable(fwd_bwd, device=dev, warmup=warmup, repeat=repeat)
        row["fwd_bwd_ms"], row["fwd_bwd_cpu_ms"] = both["median_ms"], both["cpu_median_ms"]
        if dev.type == "cuda":
            row["peak_mb"] = cuda_peak_mb(fwd_bwd, dev)
        else:
            row["saved_mb"] = saved_for_backward_mb(lambda: run(backend))
    except RuntimeError as error:
        row["note"] = "no backward: " + str(error).split("cannot run: ")[-1][:48]
    finally:
        for t in tensors:
            t.requires_grad_(False)
            t.grad = None
    return row


def benchmark_kernel(
    op: str, *, batch: int, device: str = "cpu", warmup: int = 2, repeat: int = 10
) -> list[dict]:
    """Forward and forward+backward ms (and memory) of every backend for each case of ``op``.

    Backends that cannot run on the device appear with the reason in ``note``. CPU memory is the
    storage saved for backward (:func:`saved_for_backward_mb`); CUDA memory is the allocator peak.
    """
    dev = torch.device(device)
    rows = []
    for case in KERNEL_CASES[op]:
        shape, tensors, run = _kernel_inputs(op, case, batch, dev)
        for backend in ("reference", "sdpa", "flex", "triton"):
            row = {"op": op, "case": case["case"], "shape": shape, "backend": backend}
            row.update(_measure_backend(run, backend, tensors, dev, warmup, repeat))
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- model comparison

CONFIGS: dict[str, dict] = {
    # What a user gets with plain PyTorch: reference attention, nn.Linear, glibc's default malloc.
    "default": {
        "kernels": "reference",
        "onednn": False,
        "malloc": False,
        "compile": False,
        "amp": False,
    },
    "kernels": {
        "kernels": "auto",
        "onednn": False,
        "malloc": False,
        "compile": False,
        "amp": False,
    },
    "kernels+onednn": {
        "kernels": "auto",
        "onednn": True,
        "malloc": False,
        "compile": False,
        "amp": False,
    },
    # The best CPU eager settings: auto kernels, oneDNN linears, malloc settings.
    "best": {"kernels": "auto", "onednn": True, "malloc": True, "compile": False, "amp": False},
    "best+compile": {
        "kernels": "auto",
        "onednn": False,
        "malloc": True,
        "compile": True,
        "amp": False,
    },
    # bf16 autocast (train.amp: on) changes the numerics, so it is a separate, labelled row; the
    # oneDNN fp32 linear is off because autocast already sends nn.Linear to oneDNN's bf16 kernels.
    "bf16": {"kernels": "auto", "onednn": False, "malloc": True, "compile": False, "amp": True},
}


def _model_batch(model, size: int, batch: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=gen).to(device)
    mask = (torch.rand(batch, size, size, generator=gen) > 0.5).long().to(device)
    return {
        "image": image,
        "mask": mask,
        "id": [str(i) for i in range(batch)],
        "meta": [{}] * batch,
    }


def _loss_fn(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], mask.float())
    return F.cross_entropy(logits, mask)


def measure_model(
    name: str,
    *,
    size: int,
    batch: int,
    onednn: bool,
    compile: bool,
    amp: bool = False,
    device: str = "cpu",
    warmup: int = 2,
    repeat: int = 5,
) -> dict:
    """Training step (forward, loss, backward, AdamW step) and inference time of one network.

    Attention backends follow ``DERMSEG_ATTENTION_BACKEND`` (the networks default to ``"auto"``).
    Returns milliseconds per training step and inference images per second.
    """
    import networks
    from networks.kernels.linear import convert_linear

    torch.manual_seed(0)
    dev = torch.device(device)
    model = networks.build_network(name, in_channels=3, num_classes=1).to(dev)
    if onednn:
        convert_linear(model)
    step_model = torch.compile(model) if compile else model
    data = _model_batch(model, size, batch, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            if hasattr(model, "compute_loss"):
                loss, _ = model.compute_loss(data, _loss_fn)
            else:
                loss = _loss_fn(step_model(data["image"]).float(), data["mask"])
        loss.backward()
        optimizer.step()

    def infer():
        with torch.inference_mode(), autocast():
            return (
                model.predict(data["image"])
                if hasattr(model, "predict")
                else step_model(data["image"])
            )

    start = time.perf_counter()
    model.train()
    train_step()
    first_step_s = time.perf_counter() - start
    train = time_callable(train_step, device=dev, warmup=warmup, repeat=repeat)
    model.eval()
    inference = time_callable(infer, device=dev, warmup=warmup, repeat=repeat)
    return {
        "model": name,
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "first_step_s": first_step_s,
        "train_step_ms": train["median_ms"],
        "train_step_min_ms": train["min_ms"],
        "train_step_cpu_ms": train["cpu_median_ms"],
        "infer_ms": inference["median_ms"],
        "infer_cpu_ms": inference["cpu_median_ms"],
        "infer_images_s": batch / inference["median_ms"] * 1e3,
        # Peak resident memory of the process: the malloc settings trade memory for speed.
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "malloc_env": malloc_env_active(),
        "attention_backend": os.environ.get("DERMSEG_ATTENTION_BACKEND", "auto"),
    }


def child_env(config: dict) -> dict[str, str]:
    """Environment of a configuration's subprocess: malloc settings on or scrubbed, backend set."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != MARKER}
    if config["malloc"]:
        env.update(MALLOC_ENV)
        env[MARKER] = "1"
    else:
        env[OPT_OUT] = "1"
    env["DERMSEG_ATTENTION_BACKEND"] = config["kernels"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _run_child(name: str, config_name: str, args: list[str]) -> dict:
    config = CONFIGS[config_name]
    cmd = [sys.executable, "-m", "segmentation.benchmark.timing", "--child", name, *args]
    cmd += ["--onednn"] if config["onednn"] else []
    cmd += ["--compile"] if config["compile"] else []
    cmd += ["--amp"] if config["amp"] else []
    proc = subprocess.run(cmd, env=child_env(config), cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child for configuration '{config_name}' failed (exit "
            f"{proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_model(
    name: str,
    *,
    size: int,
    batch: int,
    configs: list[str],
    warmup: int,
    repeat: int,
    device: str,
    rounds: int = 1,
) -> list[dict]:
    """Measure each configuration in fresh subprocesses; speed-ups relative to ``configs[0]``.

    With ``rounds > 1`` the configurations run interleaved (round-robin), so slow drifts in the
    load of a shared machine hit all of them alike; each timing is the median over rounds.
    """
    args = ["--size", str(size), "--batch", str(batch), "--warmup", str(warmup)]
    args += ["--repeat", str(repeat), "--device", device]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config_name in configs:
            runs[config_name].append(_run_child(name, config_name, args))
    rows = []
    for config_name, results in runs.items():
        row = {"config": config_name, **CONFIGS[config_name], **results[0], "rounds": rounds}
        keys = ("first_step_s", "train_step_ms", "train_step_cpu_ms", "infer_ms", "max_rss_mb")
        for key in keys:
            row[key] = statistics.median(r[key] for r in results)
        row["infer_cpu_ms"] = statistics.median(r["infer_cpu_ms"] for r in results)
        row["train_step_min_ms"] = min(r["train_step_min_ms"] for r in results)
        row["infer_images_s"] = batch / row["infer_ms"] * 1e3
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["train_speedup"] = base["train_step_ms"] / row["train_step_ms"]
        row["train_speedup_cpu"] = base["train_step_cpu_ms"] / row["train_step_cpu_ms"]
        row["infer_speedup"] = base["infer_ms"] / row["infer_ms"]
        row["infer_speedup_cpu"] = base["infer_cpu_ms"] / row["infer_cpu_ms"]
    return rows


def _child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one benchmark configuration (internal)")
    parser.add_argument("--child", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--onednn", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args(argv)
    result = measure_model(
        args.child,
        size=args.size,
        batch=args.batch,
        onednn=args.onednn,
        compile=args.compile,
        amp=args.amp,
        device=args.device,
        warmup=args.warmup,
        repeat=args.repeat,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    _child_main()
