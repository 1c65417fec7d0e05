"""Benchmark library and runtime helpers: malloc re-exec, child environments, timing, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segmentation.benchmark import timing as benchmark
from segmentation.runtime import MALLOC_ENV, MARKER, OPT_OUT

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import os, sys, json; sys.path.insert(0, {root!r});"
    "from segmentation.runtime import ensure_malloc_env; ensure_malloc_env();"
    "print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"
)
KEYS = [*MALLOC_ENV, MARKER]


def run_probe(**env_changes):
    env = {
        k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k not in (MARKER, OPT_OUT)
    }
    env.update(env_changes)
    code = PROBE.format(root=str(ROOT), keys=KEYS)
    proc = subprocess.run(
        [sys.executable, "-c", code, "arg1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_ensure_malloc_env_reexecs_once_with_settings():
    seen = run_probe()
    assert {k: seen[k] for k in MALLOC_ENV} == MALLOC_ENV
    assert seen[MARKER] == "1"


def test_ensure_malloc_env_respects_opt_out_and_loop_guard():
    assert all(value is None for value in run_probe(**{OPT_OUT: "1"}).values())
    # The marker says "this process is already the re-exec": no second exec even if vars are gone.
    seen = run_probe(**{MARKER: "1"})
    assert all(seen[k] is None for k in MALLOC_ENV)


def test_ensure_malloc_env_keeps_user_values():
    seen = run_probe(MALLOC_TOP_PAD_="4096")
    assert seen["MALLOC_TOP_PAD_"] == "4096"
    assert seen["MALLOC_MMAP_MAX_"] == "0"


def test_child_env_scrubs_or_sets_malloc(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    default = benchmark.child_env(benchmark.CONFIGS["default"])
    best = benchmark.child_env(benchmark.CONFIGS["best"])
    assert not any(k in default for k in MALLOC_ENV) and default[OPT_OUT] == "1"
    assert default["DERMSEG_ATTENTION_BACKEND"] == "reference"
    assert all(best[k] == v for k, v in MALLOC_ENV.items())
    assert best["DERMSEG_ATTENTION_BACKEND"] == "auto"


def test_time_callable_and_table():
    calls = []
    result = benchmark.time_callable(
        lambda: calls.append(1), device=torch.device("cpu"), warmup=2, repeat=3
    )
    assert len(calls) == 5 and result["repeat"] == 3 and result["min_ms"] <= result["median_ms"]
    table = benchmark.format_table([{"a": 1.234, "b": None}, {"a": 2.0, "b": "x"}], ["a", "b"])
    assert table.splitlines()[2].split() == ["1.23", "-"]


def test_saved_for_backward_counts_attention_map():
    q = torch.randn(2, 3, 16, 8, requires_grad=True)
    mb = benchmark.saved_for_backward_mb(lambda: (q @ q.transpose(-2, -1)).softmax(-1))
    # q (saved once for both matmul operands) + the softmax output [2, 3, 16, 16].
    assert mb == pytest.approx((2 * 3 * 16 * 8 + 2 * 3 * 16 * 16) * 4 / 2**20)


def test_kernel_benchmark_reports_every_backend(monkeypatch):
    monkeypatch.setitem(
        benchmark.KERNEL_CASES,
        "window_attention",
        [{"case": "t", "side": 4, "window": 2, "heads": 1, "dim": 4, "shift": True}],
    )
    monkeypatch.setenv("DERMSEG_ATTENTION_BACKEND", "auto")
    from torch.nn.attention.flex_attention import flex_attention

    from networks.kernels import _common

    monkeypatch.setattr(_common, "_compiled_flex", flex_attention)  # eager: no compile in tests
    rows = benchmark.benchmark_kernel("window_attention", batch=1, warmup=0, repeat=1)
    by_backend = {row["backend"]: row for row in rows}
    assert set(by_backend) == {"reference", "sdpa", "flex", "triton"}
    assert by_backend["reference"]["fwd_bwd_ms"] > 0 and by_backend["sdpa"]["saved_mb"] > 0
    assert (
        "fwd_bwd_ms" not in by_backend["flex"] and "no CPU backward" in by_backend["flex"]["note"]
    )
    assert "CUDA" in by_backend["triton"]["note"]


def test_measure_model_in_process():
    result = benchmark.measure_model(
        "unet_tiny", size=32, batch=2, onednn=True, compile=False, warmup=0, repeat=1
    )
    assert result["train_step_ms"] > 0 and result["infer_images_s"] > 0


@pytest.mark.slow
def test_compare_model_runs_configs_in_subprocesses():
    rows = benchmark.compare_model(
        "unet_tiny", size=32, batch=1, configs=["default", "best"], warmup=0, repeat=1, device="cpu"
    )
    assert [r["config"] for r in rows] == ["default", "best"]
    assert rows[0]["malloc_env"] is False and rows[1]["malloc_env"] is True
    assert rows[0]["train_speedup"] == 1.0
