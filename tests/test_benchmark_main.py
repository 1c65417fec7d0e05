"""The main (three-seed) benchmark suite: statistics, provenance, resumability, CI checks, README.

The multi-hour suite never runs here. Runs are either doctored (``run_row`` replaced inside the real
child code path, in process) or real but tiny (``unet_tiny`` at 32 px, 4 steps) for the
bit-reproducibility of the CI re-run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segmentation.benchmark import ci_checks, main_suite, provenance, stats
from segmentation.benchmark import row as benchmark_row
from segmentation.benchmark.readme import MAIN_END, MAIN_START, render_main_markdown, write_readme
from segmentation.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = """model:
  name: {net}
data:
  name: synthetic
  seed: 0
  image_size: 32
  n_train: 16
  n_val: 4
  n_test: 6
  augment: default
optim:
  name: adamw
  lr: {lr}
sched:
  name: warmup_cosine
  warmup_steps: 1
train:
  steps: 4
  batch_size: 4
  eval_every: 1
  checkpoint_every: 1
  image_panel_every: 0
  device: auto
  deterministic: true
eval:
  batch_size: 8
  boundary: false
"""


def _tiny_folder(tmp_path: Path, rows=(("unet", "unet_tiny"), ("swin_unet", "swin_unet_tiny"))):
    folder = tmp_path / "cfg"
    folder.mkdir()
    for name, net in rows:
        (folder / f"{name}.yaml").write_text(TINY.format(net=net, lr="1.0e-3"))
    return folder


# ------------------------------------------------------------------------------------- statistics
def test_paired_delta_on_a_hand_made_case():
    ref = [{"per_image_dice": [0.2, 0.9, 0.5, 0.7]}, {"per_image_dice": [0.4, 0.7, 0.5, 0.9]}]
    # seed means: reference [0.3, 0.8, 0.5, 0.8], row [0.35, 0.85, 0.55, 0.85]: +0.05 on every
    # image, although the images themselves vary a lot (an unpaired interval would include 0)
    row = [{"per_image_dice": [0.3, 0.9, 0.6, 0.8]}, {"per_image_dice": [0.4, 0.8, 0.5, 0.9]}]
    delta = stats.paired_delta(row, ref, n_boot=2000)
    assert delta["mean"] == pytest.approx(0.05)
    assert delta["ci95"] == pytest.approx([0.05, 0.05]) and delta["significant"]
    assert delta["n_images"] == 4
    # pairing follows the ids, not the list order
    ids, ref_ids = ["a", "b", "c", "d"], ["d", "c", "b", "a"]
    flipped = [{"per_image_dice": s["per_image_dice"][::-1]} for s in ref]
    again = stats.paired_delta(row, flipped, ids=ids, ref_ids=ref_ids, n_boot=2000)
    assert again["mean"] == pytest.approx(0.05) and again["ci95"] == pytest.approx([0.05, 0.05])
    # differences of +-0.1 that cancel: mean 0, interval across 0, not significant
    even = [{"per_image_dice": [0.4, 0.7, 0.6, 0.7]}, {"per_image_dice": [0.4, 0.7, 0.6, 0.7]}]
    zero = stats.paired_delta(even, ref, n_boot=2000)
    assert zero["mean"] == pytest.approx(0.0) and not zero["significant"]
    assert zero["ci95"][0] < 0 < zero["ci95"][1]


def test_paired_delta_matches_a_direct_bootstrap_and_rejects_other_images():
    rng = np.random.default_rng(1)
    ref = [{"per_image_dice": list(rng.uniform(0.3, 1.0, 50))} for _ in range(3)]
    noise = rng.normal(0.02, 0.05, (3, 50))
    row = [{"per_image_dice": list(np.clip(np.array(s["per_image_dice"]) + e, 0, 1))}
           for s, e in zip(ref, noise, strict=True)]  # fmt: skip
    delta = stats.paired_delta(row, ref, n_boot=500, seed=3)
    diff = np.mean([s["per_image_dice"] for s in row], 0) - np.mean(
        [s["per_image_dice"] for s in ref], 0
    )
    resampled = [diff[np.random.default_rng(3).integers(0, 50, (500, 50))].mean(1)]
    assert delta["ci95"] == pytest.approx(list(np.percentile(resampled[0], [2.5, 97.5])))
    with pytest.raises(ValueError, match="different images"):
        stats.paired_delta(row[:1], ref[:1], ids=list("a" * 50), ref_ids=list("b" * 50))


def test_mean_std_and_the_still_improving_flag():
    summary = stats.mean_std([0.7, 0.8, 0.9, None])
    assert summary["mean"] == pytest.approx(0.8) and summary["std"] == pytest.approx(0.1)
    assert summary["n"] == 3 and stats.mean_std([None])["mean"] is None
    rising = [[[300, 0.6], [600, 0.7], [900, 0.75], [1200, 0.77]]] * 3
    flat = [[[300, 0.6], [600, 0.7], [900, 0.75], [1200, 0.755]]] * 3
    conv = stats.convergence(rising, 1200)
    assert conv["fractions"] == [0.25, 0.5, 0.75, 1.0]
    assert conv["rise_last_quarter"] == pytest.approx(0.02) and conv["still_improving"]
    assert not stats.convergence(flat, 1200)["still_improving"]


def test_the_convergence_sentence_names_every_row_still_improving():
    from segmentation.benchmark.readme import convergence_sentence

    def row(rise):
        return {"convergence": {"rise_last_quarter": rise, "still_improving": rise > 0.01}}

    rows = {"unet": row(0.004), "swin_unet": row(0.026), "segdt": row(0.0101)}
    assert convergence_sentence(rows, 0.01) == (
        "Convergence: 2 of 3 trained rows were still improving (mean validation Dice up by more "
        "than 0.01 over the last quarter): `swin_unet` (+0.0260), `segdt` (+0.0101); the others "
        "converged."
    )
    one = {"unet": row(0.004), "swin_unet": row(0.026)}
    assert convergence_sentence(one, 0.01).startswith("Convergence: 1 of 2 trained rows was still")
    assert convergence_sentence({"unet": row(0.004)}, 0.01).startswith(
        "Convergence: every trained row's mean validation Dice rose by at most 0.01"
    )


# ------------------------------------------------------------------------------------- provenance
def test_import_closure_follows_network_imports_only():
    files = provenance.import_closure("networks.att_swinunet")
    for path in (
        "networks/att_swinunet.py",
        "networks/swin_unet.py",
        "networks/blocks/swin.py",
        "networks/kernels/window_attention.py",
        "networks/kernels/global_attention.py",
    ):
        assert path in files, path  # fmt: skip
    assert "networks/__init__.py" not in files and "networks/unet.py" not in files
    segdt = provenance.import_closure(provenance.network_module("segdt"))
    assert "networks/segdt/dit.py" in segdt and "networks/segdt/__init__.py" in segdt


def _copy_sources(root: Path) -> None:
    """The files provenance hashes, copied under ``root``."""
    shutil.copytree(ROOT / "networks", root / "networks", ignore=shutil.ignore_patterns("__py*"))
    for path in (*provenance.SHARED_SOURCES, "segmentation/planning.py"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, root / path)


def _fake_run_row(name, config, run_dir, *, log=print, gmac_sizes=(128,), details=False, **_):
    """``run_row`` without training: plausible numbers that depend on the seed, the row and its
    learning rate (+0.01 per 1e-3 above 1e-3)."""
    seed, n = config.train.seed, config.raw["data"]["n_test"]
    base = 0.6 + 0.02 * seed + (0.1 if name == "unet" else 0.0)
    base += round(10 * (config.raw["optim"]["lr"] - 1e-3), 6)
    per_image = [round(base + 0.01 * (i % 3), 6) for i in range(n)]
    steps = config.train.steps
    metrics = {m: base for m in main_suite.PER_SEED_METRICS}
    return {
        "name": name, "label": name, "network": config.raw["model"]["name"],
        "model_kwargs": {"in_channels": 3, "num_classes": 1},
        "prompt": None, "params": 1000, "trainable_params": 1000, "gmac_32": 0.01,
        "test_ids": [f"syn_{i}" for i in range(n)], "per_image_dice": per_image, **metrics,
        "dice": float(np.mean(per_image)), "hd95_excluded": 0, "worst_group": "dark",
        "n_empty_pred_on_lesion": 0, "val_curve": [[steps * q // 4, base] for q in (1, 2, 3, 4)],
        "val_dice": base, "step": steps, "train_wall_s": 1.0, "wall_s": 2.0,
        "train_images_s": 10.0, "infer_images_s": 50.0, "peak_rss_mb": 500.0,
        "peak_cuda_mb": None,
    }  # fmt: skip


@pytest.fixture
def doctored(monkeypatch):
    """Runs go through the real child code (provenance, result.json) in process, with a fake
    ``run_row``; returns the list of launched specs."""
    launched = []

    def fake_launch(spec):
        launched.append(spec)
        Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        try:
            return main_suite.run_child(spec), ""
        finally:  # the child sets its thread count; this process keeps its own
            torch.set_num_threads(threads)

    monkeypatch.setattr(benchmark_row, "run_row", _fake_run_row)
    monkeypatch.setattr(main_suite, "launch", fake_launch)
    monkeypatch.setattr(ci_checks, "launch", fake_launch)
    return launched


def test_check_provenance_fails_after_a_one_line_change_and_passes_after_regeneration(
    tmp_path, monkeypatch, doctored
):
    root = tmp_path / "repo"
    _copy_sources(root)
    monkeypatch.setattr(provenance, "REPO_ROOT", root)  # hash the copy, never the checkout
    folder = _tiny_folder(tmp_path)
    run = dict(seeds=(0, 1), folder=folder, work_dir=tmp_path / "work", log=lambda *_: None)
    result = main_suite.run_main_suite(**run)
    assert ci_checks.check_provenance(result, folder=folder) == ([], [])
    with open(root / "networks/unet.py", "a") as f:
        f.write("# a one-line change\n")
    failures, _ = ci_checks.check_provenance(result, folder=folder)
    assert failures == [
        "unet: stale - networks/unet.py changed",
        f"regenerate with: python tools/benchmark.py --suite synthetic --configs {folder} --only "
        "unet --json benchmarks/synthetic.json",  # not the main suite: its own JSON, no README
    ]  # swin_unet does not import unet.py
    assert ci_checks.regenerate_command(["unet"]) == (
        "python tools/benchmark.py --suite synthetic --only unet --json benchmarks/synthetic.json "
        "--write-readme"
    )
    doctored.clear()
    regenerated = main_suite.run_main_suite(only=["unet"], **run)
    assert [(s["name"], s["seed"]) for s in doctored] == [("unet", 0), ("unet", 1)]
    merged = main_suite.merge(result, regenerated)
    assert ci_checks.check_provenance(merged, folder=folder) == ([], [])
    # a changed config is stale too, and so is a row without a configuration file
    (folder / "swin_unet.yaml").write_text(TINY.format(net="swin_unet_tiny", lr="2.0e-3"))
    (folder / "extra.yaml").write_text(TINY.format(net="unet_tiny", lr="1.0e-3"))
    failures, _ = ci_checks.check_provenance(merged, folder=folder)
    assert failures[:2] == [
        "extra: stale - missing from the results (a configuration file exists)",
        "swin_unet: stale - its resolved configuration changed",
    ]


def test_main_suite_resumes_finished_runs_and_reruns_stale_ones(tmp_path, monkeypatch, doctored):
    folder = _tiny_folder(tmp_path)
    run = dict(seeds=(0, 1), folder=folder, work_dir=tmp_path / "work", log=lambda *_: None)
    first = main_suite.run_main_suite(**run)
    # seed-major order: every row at seed 0 first
    assert [(s["name"], s["seed"]) for s in doctored] == [
        ("unet", 0), ("swin_unet", 0), ("unet", 1), ("swin_unet", 1)
    ]  # fmt: skip
    doctored.clear()
    again = main_suite.run_main_suite(**run)  # a killed-and-restarted suite with nothing left
    assert doctored == [] and again["rows"] == first["rows"]
    (tmp_path / "work/swin_unet/seed1/result.json").unlink()  # killed during this run
    main_suite.run_main_suite(**run)
    assert [(s["name"], s["seed"]) for s in doctored] == [("swin_unet", 1)]
    doctored.clear()
    main_suite.run_main_suite(**run, threads=1)  # another thread count: bits may differ, all re-run
    assert len(doctored) == 4
    doctored.clear()
    main_suite.run_main_suite(**run, overrides=["optim.lr=5.0e-4"])  # another recipe: all stale
    assert len(doctored) == 4
    seed1 = tmp_path / "work/unet/seed1/result.json"  # a source edited between two seeds
    stored = json.loads(seed1.read_text())
    stored["provenance"]["files"]["networks/unet.py"] = "0" * 64
    seed1.write_text(json.dumps(stored))
    monkeypatch.setattr(main_suite, "_finished", lambda *a: json.loads(seed1.read_text())
                        if "unet/seed1" in str(a[0]) else None)  # fmt: skip
    mixed = main_suite.run_main_suite(**run, only=["unet"], overrides=["optim.lr=5.0e-4"])
    assert mixed["failures"] == [
        "unet: its seeds ran on different source files (edited during the suite); run it again, "
        "from a clean checkout."
    ]
    row = first["rows"]["swin_unet"]
    assert row["n_seeds"] == 2 and [s["seed"] for s in row["per_seed"]] == [0, 1]
    assert row["dice_mean"] == pytest.approx(np.mean([s["dice"] for s in row["per_seed"]]))
    assert (
        row["delta_vs_unet"]["mean"] == pytest.approx(-0.1) and row["delta_vs_unet"]["significant"]
    )
    assert first["rows"]["unet"]["delta_vs_unet"] is None
    assert row["convergence"]["still_improving"] is False and row["provenance"]["config_sha256"]
    gmac = row["train_gmac_per_image"]  # counted by the suite (its network, 32 px), not the run
    assert gmac > 0 and row["train_tmac"] == pytest.approx(gmac * 4 * 4 / 1e3)


@pytest.mark.parametrize("groups", [1, 4, 64])
def test_training_gmac_counts_a_convolution_backward_as_twice_its_forward(groups):
    """Gradients of input and weight cost one forward each, grouped or not (torch 2.14's own
    formula counted the weight gradient of a 64-group conv 64x too high, which made MCANet's
    training cost look 20x its inference)."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(64, 64, 7, padding=3, groups=groups)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    mapping = {torch.ops.aten.convolution_backward: benchmark_row._conv_backward_flop}
    forward, both = (
        FlopCounterMode(display=False),
        FlopCounterMode(display=False, custom_mapping=mapping),
    )
    with forward:
        conv(x)
    with both:
        conv(x).sum().backward()
    assert forward.get_total_flops() == 2 * 2 * 64 * 16 * 16 * (64 // groups) * 49
    assert both.get_total_flops() == 3 * forward.get_total_flops()


def test_collect_tabulates_finished_runs_without_training_the_missing_ones(tmp_path, doctored):
    """``--collect``: a partial table from a suite still running elsewhere; nothing is trained."""
    folder = _tiny_folder(tmp_path)
    run = dict(folder=folder, work_dir=tmp_path / "work", log=lambda *_: None)
    main_suite.run_main_suite(seeds=(0,), **run)
    main_suite.run_main_suite(seeds=(1,), only=["unet"], **run)
    doctored.clear()
    partial = main_suite.run_main_suite(seeds=(0, 1, 2), train=False, **run)
    assert doctored == []
    seed_major = ["swin_unet seed 1", "unet seed 2", "swin_unet seed 2"]
    assert partial["missing"] == seed_major
    assert [r["n_seeds"] for r in partial["rows"].values()] == [2, 1]
    assert partial["failures"] == [] and partial["rows"]["swin_unet"]["delta_vs_unet"]
    text = render_main_markdown(partial)
    assert "| `swin_unet` (1 seed) |" in text and "| `unet` (2 seeds) |" in text
    assert "**Incomplete table**: 3 of the suite's runs" in text and "swin_unet seed 2" in text
    # the delta is -0.11 with a CI that excludes 0, but 1-2 seeds are not a result: no claim
    assert "| `swin_unet` (1 seed) | 0.6100 | -0.1100 [-0.1100, -0.1100] |" in text
    assert "worse than" not in text and "Not judged until they and `unet` have 3 seeds" in text
    complete = main_suite.run_main_suite(seeds=(0,), train=False, **run)
    assert complete["missing"] == [] and "Incomplete" not in render_main_markdown(complete)


@pytest.mark.slow  # two fresh processes (5.5 min measured on the shared machine under load)
def test_reproduce_real_runs_are_bit_identical(tmp_path):
    """Seed 0 of a real (tiny) run, re-run in another fresh process by the CI check: identical."""
    folder = _tiny_folder(tmp_path, rows=(("unet", "unet_tiny"),))
    result = main_suite.run_main_suite(
        seeds=(0,), folder=folder, work_dir=tmp_path / "work", threads=1, log=lambda *_: None
    )
    assert (
        result["failures"] == []
        and len(result["rows"]["unet"]["per_seed"][0]["per_image_dice"]) == 6
    )
    failures, report = ci_checks.reproduce(
        result, ["unet"], work_dir=tmp_path / "again", folder=folder, log=lambda *_: None
    )
    assert failures == [] and "bit-identical" in report[0]


class _Killed(Exception):
    """Stands for a kill right after a checkpoint (the suite stopped, the session ended)."""


def test_a_stopped_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    folder = _tiny_folder(tmp_path, rows=(("unet", "unet_tiny"),))
    launched = []

    def in_process(spec):  # the real child code path, real training, in this process
        launched.append(spec)
        threads = torch.get_num_threads()
        if not spec["resume"]:
            shutil.rmtree(spec["run_dir"], ignore_errors=True)
        Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
        try:
            return main_suite.run_child(spec), ""
        except _Killed as err:
            return None, f"killed: {err}"
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(main_suite, "launch", in_process)
    run = dict(seeds=(0,), folder=folder, threads=1, log=lambda *_: None)
    whole = main_suite.run_main_suite(**run, work_dir=tmp_path / "whole", keep_checkpoints=True)
    assert whole["failures"] == [] and not launched[0]["resume"]
    write = benchmark_row._TimingHook.write_progress

    def killed_at_step_2(self, step):
        write(self, step)
        if step == 2:
            raise _Killed(f"after the checkpoint of step {step}")

    monkeypatch.setattr(benchmark_row._TimingHook, "write_progress", killed_at_step_2)
    stopped = main_suite.run_main_suite(**run, work_dir=tmp_path / "work")
    assert stopped["rows"] == {} and stopped["failures"][0].startswith("unet seed 0: killed")
    run_dir = tmp_path / "work/unet/seed0"
    record = json.loads((run_dir / "progress.json").read_text())
    assert record["step"] == 2 and [p[0] for p in record["curve"]] == [1, 2]
    identity = launched[-1]["identity"]
    assert benchmark_row.read_progress(run_dir, identity)[1]["step"] == 2
    # what cannot be resumed is not: another run's record, or no complete checkpoint of its step
    assert benchmark_row.read_progress(run_dir, {**identity, "threads": 2}) is None
    assert benchmark_row.read_progress(run_dir, {**identity, "seed": 1}) is None

    monkeypatch.setattr(benchmark_row._TimingHook, "write_progress", write)
    messages = []
    resumed = main_suite.run_main_suite(
        **{**run, "log": messages.append}, work_dir=tmp_path / "work", keep_checkpoints=True
    )
    assert launched[-1]["resume"] and any("stopped at step 2" in m for m in messages)
    one, two = (r["rows"]["unet"]["per_seed"][0] for r in (whole, resumed))
    assert two["resumed_from"] == [2] and one["resumed_from"] == []
    assert two["per_image_dice"] == one["per_image_dice"] and two["dice"] == one["dice"]
    assert two["val_curve"] == one["val_curve"] and [p[0] for p in two["val_curve"]] == [1, 2, 3, 4]
    assert len(two["spans"]) == 2 and two["spans"][0][0] == two["started_at"]
    assert two["spans"][0][1] <= two["spans"][1][0] and two["spans"][1][1] == two["finished_at"]
    final = [torch.load(d / "unet/seed0/checkpoints/last.pt", weights_only=True)
             for d in (tmp_path / "whole", tmp_path / "work")]  # fmt: skip
    assert final[0]["step"] == final[1]["step"] == 4
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key

    # killed during its test evaluation: resumed at the final step, nothing is trained again
    (run_dir / "result.json").unlink()
    tested = main_suite.run_main_suite(**run, work_dir=tmp_path / "work")["rows"]["unet"]
    three = tested["per_seed"][0]
    assert launched[-1]["resume"] and three["resumed_from"] == [2, 4]
    assert three["per_image_dice"] == one["per_image_dice"]
    assert three["val_curve"] == one["val_curve"]
    assert three["train_images_s"] == two["train_images_s"]  # measured before the stop, kept
    assert not (run_dir / "progress.json").exists() and not (run_dir / "checkpoints").exists()

    # a stopped run whose checkpoint of the recorded step is truncated starts again from step 0
    shutil.rmtree(run_dir)
    monkeypatch.setattr(benchmark_row._TimingHook, "write_progress", killed_at_step_2)
    main_suite.run_main_suite(**run, work_dir=tmp_path / "work")
    for path in (run_dir / "checkpoints").glob("*.pt"):
        if path.name != "best.pt":
            path.write_bytes(path.read_bytes()[:100])
    assert benchmark_row.read_progress(run_dir, identity) is None
    monkeypatch.setattr(benchmark_row._TimingHook, "write_progress", write)
    again = main_suite.run_main_suite(**run, work_dir=tmp_path / "work")
    assert not launched[-1]["resume"]
    assert again["rows"]["unet"]["per_seed"][0]["resumed_from"] == []
    assert again["rows"]["unet"]["per_seed"][0]["per_image_dice"] == one["per_image_dice"]
    assert not (run_dir / "progress.json").exists() and not (run_dir / "checkpoints").exists()


def test_reproduce_fails_beyond_the_stated_tolerance(tmp_path, doctored):
    folder = _tiny_folder(tmp_path, rows=(("unet", "unet_tiny"),))
    run = dict(folder=folder, log=lambda *_: None)
    result = main_suite.run_main_suite(seeds=(0,), work_dir=tmp_path / "work", **run)
    assert ci_checks.reproduce(result, ["unet"], work_dir=tmp_path / "a", **run)[0] == []
    changed = copy.deepcopy(result)
    changed["rows"]["unet"]["per_seed"][0]["dice"] += 0.05  # the committed number moved
    failures, report = ci_checks.reproduce(changed, ["unet"], work_dir=tmp_path / "b", **run)
    assert len(failures) == 1 and "tolerance 0.02" in failures[0]
    assert "(difference -0.0500, tolerance 0.02)" in report[0]
    changed["protocol"]["reproduce_tolerance"]["dice"] = 0.05
    with pytest.raises(ValueError, match="at most 0.02"):
        ci_checks.reproduce(changed, ["unet"], work_dir=tmp_path / "c", **run)


def test_pick_rows_is_deterministic_distinct_and_covers_every_row():
    names = [f"row{i}" for i in range(7)]
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert ci_checks.pick_rows(commit, names) == ci_checks.pick_rows(commit, names[::-1])
    picked = {tuple(ci_checks.pick_rows(f"{i:040x}", names)) for i in range(200)}
    assert all(len(set(p)) == 2 for p in picked)
    assert {n for p in picked for n in p} == set(names) and len(picked) > 20
    assert (
        ci_checks.pick_rows(commit, ["only"]) == ["only"] and ci_checks.pick_rows(commit, []) == []
    )
    # a time budget: every pair fits it, and every row that can fit with the cheapest one is picked
    costs = {"row0": 900, "row1": 100, "row2": 300, "row3": 1100, "row4": 1150, "row5": 200,
             "row6": 700}  # fmt: skip
    within = {tuple(ci_checks.pick_rows(f"{i:040x}", names, costs=costs, budget_s=1200))
              for i in range(400)}  # fmt: skip
    assert all(len(p) == 2 and costs[p[0]] + costs[p[1]] <= 1200 for p in within)
    assert {n for p in within for n in p} == set(names) - {"row4"}  # 1150 + 100 never fits
    assert ci_checks.pick_rows(commit, names, costs=costs, budget_s=50) == []


def test_pick_rows_side_by_side_budgets_the_longest_pick():
    names = [f"row{i}" for i in range(7)]
    costs = {"row0": 900, "row1": 100, "row2": 300, "row3": 1100, "row4": 1150, "row5": 200,
             "row6": 700}  # fmt: skip
    within = {tuple(ci_checks.pick_rows(f"{i:040x}", names, costs=costs, budget_s=1000,
                                        side_by_side=True)) for i in range(400)}  # fmt: skip
    assert all(len(p) == 2 and max(costs[p[0]], costs[p[1]]) <= 1000 for p in within)
    assert {n for p in within for n in p} == set(names) - {"row3", "row4"}
    assert any(costs[p[0]] + costs[p[1]] > 1000 for p in within)  # one after the other: too long


def test_reproduce_jobs_follow_the_recorded_threads():
    assert ci_checks.reproduce_jobs(1, 2, cpus=2) == 2  # the suite's --jobs 2 --threads 1
    assert ci_checks.reproduce_jobs(2, 2, cpus=2) == 1
    assert ci_checks.reproduce_jobs(1, 1, cpus=8) == 1
    assert ci_checks.reproduce_jobs(4, 2, cpus=2) == 1


def test_reproduce_runs_its_rows_side_by_side(tmp_path, monkeypatch):
    """With jobs=2 both re-runs are in flight at once (a barrier of two would time out if they ran
    one after the other), and each is still compared with its own committed seed 0."""
    import threading

    folder = _tiny_folder(tmp_path, rows=(("unet", "unet_tiny"), ("swin_unet", "swin_unet_tiny")))
    barrier = threading.Barrier(2, timeout=30)
    committed = {"unet": 0.5, "swin_unet": 0.6}

    def fake_launch(spec):
        barrier.wait()
        name = Path(spec["run_dir"]).parent.name
        return {"dice": committed[name], "per_image_dice": [committed[name]]}, None

    monkeypatch.setattr(ci_checks, "launch", fake_launch)
    reference = {
        "protocol": {"threads": 1, "overrides": [], "reproduce_tolerance": {"dice": 0.02}},
        "rows": {n: {"per_seed": [{"seed": 0, "dice": d, "per_image_dice": [d]}]}
                 for n, d in committed.items()},
    }  # fmt: skip
    failures, report = ci_checks.reproduce(reference, ["unet", "swin_unet"], work_dir=tmp_path,
                                           folder=folder, jobs=2, log=lambda *_: None)  # fmt: skip
    assert failures == [] and len(report) == 2 and all("bit-identical" in r for r in report)


# ------------------------------------------------------------------------------------ CLI and CI
def _tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_tool", ROOT / "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_checks_skip_while_the_results_are_missing_and_fail_on_stale_rows(tmp_path, capsys):
    tool = _tool()
    missing = tmp_path / "synthetic.json"
    for flag in ("--check-provenance", "--reproduce"):
        assert tool.main([flag, str(missing), "--allow-missing"]) == []
        assert "SKIPPED" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exit_info:  # a typo in the path is an error, exit 2
            tool.main([flag, str(missing)])
        assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    missing.write_text(json.dumps({"protocol": {}, "rows": {}}))
    assert tool.main(["--reproduce", str(missing), "--allow-missing"]) == []
    assert "has no rows yet" in capsys.readouterr().out
    stale = {"protocol": {}, "rows": {"unet": {"provenance": {"config_sha256": "0", "files": {}}}}}
    missing.write_text(json.dumps(stale))
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--check-provenance", str(missing)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1 and "CHECK FAILED: unet: stale" in out
    assert "--suite synthetic --only unet," in out  # every row of experiments/synthetic is stale


def test_ci_run_keeps_the_readme_commands_and_adds_both_checks():
    text = (ROOT / ".ci/run").read_text()
    assert "python tools/benchmark.py --suite ci --check benchmarks/ci.json" in text
    assert "--check-provenance benchmarks/synthetic.json --allow-missing" in text
    assert "--reproduce benchmarks/synthetic.json --allow-missing" in text


# ------------------------------------------------------------------------- configs, README, figure
def test_every_main_suite_config_loads_builds_and_shares_data_and_recipes():
    from segmentation.training.build import build_dataset, build_model, model_spec

    configs = {name: config for name, (_, config) in main_suite.load_configs().items()}
    assert {"unet", "smp_unet", "nnunet2d", "swin_unet", "att_swinunet_cross", "mcanet", "iscf",
            "iscf_off", "transdae", "segdt", "sam_adapter", "medsam_ca", "sam2_adapter",
            "att_swinunet_spatial", "att_swinunet_cross_spatial"} <= set(configs)  # fmt: skip
    for name, config in configs.items():
        assert config.raw["data"]["image_size"] == 128 and config.raw["data"]["n_test"] == 300
        assert config.train.device == "auto" and config.train.steps % 4 == 0, name
        model = build_model(model_spec(config, build_dataset(config, "train")))
        assert sum(p.numel() for p in model.parameters()) > 0, name

    length = ("steps", "eval_every", "checkpoint_every", "warmup_steps")

    def recipe(raw):  # precision aside (bf16 only under swin_unet.yaml's rule); the schedule's
        train = {k: v for k, v in raw["train"].items() if k not in ("amp", *length)}  # length too
        sched = {k: v for k, v in raw["sched"].items() if k not in length}
        return {"train": train, "sched": sched, **{k: raw[k] for k in ("optim", "loss")}}

    # The Swin family (the skip-attention ablation) shares one optimiser, loss, batch and schedule
    # shape (warm-up 5 %); its rows move to longer schedules one at a time, each YAML says which.
    swin = configs["swin_unet"].raw
    for mode in ("cross", "spatial", "cross_spatial"):
        raw = configs[f"att_swinunet_{mode}"].raw
        assert raw["model"]["skip_attention"] == mode
        assert recipe(raw) == recipe(swin)
        assert raw["sched"]["warmup_steps"] * 20 == raw["train"]["steps"], mode
    fp32 = [n for n, c in configs.items() if c.train.amp != "on"]
    assert "att_swinunet_spatial" in fp32 and "swin_unet" not in fp32  # docs/benchmark.md says so
    iscf, off = configs["iscf"].raw, configs["iscf_off"].raw
    assert {**iscf["model"], "iscf": False} == off["model"]
    assert {k: v for k, v in iscf.items() if k != "model"} == {
        k: v for k, v in off.items() if k != "model"
    }


def test_att_swinunet_none_is_swin_unet_so_the_alias_row_is_honest():
    """The table shows att_swinunet_none as swin_unet without training it: same init, output."""
    configs = main_suite.load_configs(["swin_unet", "att_swinunet_cross"])
    swin = configs["swin_unet"][1].section("model")
    att = configs["att_swinunet_cross"][1].section("model")
    att["skip_attention"] = "none"
    import networks

    built = []
    for spec in (swin, att):
        torch.manual_seed(0)
        built.append(networks.build_network(spec.pop("name"), in_channels=3, num_classes=1, **spec))
    a, b = (m.eval() for m in built)
    assert list(a.state_dict()) == list(b.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert main_suite.ALIASES == {"att_swinunet_none": "swin_unet"}


def test_main_suite_config_errors_name_the_file(tmp_path):
    folder = _tiny_folder(tmp_path)
    (folder / "swin_unet.yaml").write_text(TINY.format(net="swin_unet_tiny", lr="1.0e-3")
                                           .replace("n_val: 4", "n_val: 5"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"swin_unet.yaml: section 'data'"):
        main_suite.load_configs(folder=folder)
    (folder / "swin_unet.yaml").write_text(TINY.format(net="swin_unet_tiny", lr="1.0e-3")
                                           .replace("eval_every: 1", "eval_every: 2"))  # fmt: skip
    with pytest.raises(ConfigError, match="set eval_every to steps / 4"):
        main_suite.load_configs(folder=folder)
    with pytest.raises(ValueError, match="multiple of 4"):
        main_suite.step_overrides(6)


def _fake_main_result(tmp_path, doctored_runs) -> dict:
    folder = _tiny_folder(tmp_path, rows=(("unet", "unet_tiny"), ("swin_unet", "swin_unet_tiny"),
                                          ("sam_adapter", "sam_adapter_tiny")))  # fmt: skip
    return main_suite.run_main_suite(
        seeds=(0, 1, 2), folder=folder, work_dir=tmp_path / "work", log=lambda *_: None
    )


def test_readme_main_table_blocks_significance_and_idempotence(tmp_path, doctored):
    result = _fake_main_result(tmp_path, doctored)
    text = render_main_markdown(result)
    assert "| `unet` | 0.7300 +- 0.0200 | reference |" in text
    assert "| `swin_unet` | 0.6300 +- 0.0200 | **-0.1000 [-0.1000, -0.1000]** |" in text
    assert "| `att_swinunet_none` | = `swin_unet`: the same network and recipe" in text
    assert "worse than `unet`: `swin_unet` (-0.100)" in text
    assert all(row["recipe"]["amp"] == "auto" for row in result["rows"].values())
    assert ", bf16 |" not in text  # fp32 recipes carry no precision mark
    result["rows"]["swin_unet"]["recipe"]["amp"] = "on"
    row = next(
        line for line in render_main_markdown(result).splitlines() if "| `swin_unet` |" in line
    )
    assert re.search(r"\| \d+ x \d+, bf16 \|", row)
    methods, sam = text.split("SAM-family pipeline checks - not SAM results.")
    assert "`sam_adapter`" in sam and "`sam_adapter`" not in methods.split("Notes:")[0]
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{MAIN_START}\nOLD TABLE\n{MAIN_END}\n## next\n")
    assert write_readme(readme, result, main=True) and not write_readme(readme, result, main=True)
    assert (
        readme.read_text().endswith(f"{MAIN_END}\n## next\n")
        and "OLD TABLE" not in readme.read_text()
    )


def test_figure_is_written(tmp_path, doctored):
    from segmentation.benchmark.figure import plot_main

    path = plot_main(_fake_main_result(tmp_path, doctored), tmp_path / "fig.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_figure_title_names_an_ablation_folder():
    from segmentation.benchmark.figure import figure_title

    protocol = {"image_size": 128, "cpu": "AMD EPYC", "configs": "experiments/synthetic/*.yaml"}
    assert figure_title(protocol).startswith("dermseg main benchmark: synthetic data, 128 px")
    ablation = {**protocol, "configs": "experiments/ablations/spatial_fusion/*.yaml"}
    assert figure_title(ablation).startswith(
        "dermseg ablation experiments/ablations/spatial_fusion: synthetic data"
    )


def test_cli_runs_merges_and_writes_json_figure_and_readme(tmp_path, monkeypatch, doctored, capsys):
    from segmentation.cli import benchmark as benchmark_cli

    tool = _tool()
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{MAIN_START}\nplaceholder\n{MAIN_END}\n")
    monkeypatch.setattr(benchmark_cli, "README", readme)  # never the checkout's README
    out = tmp_path / "bench" / "synthetic.json"
    args = ["--suite", "synthetic", "--seeds", "0,1", "--work-dir", str(tmp_path / "work"),
            "--json", str(out), "--write-readme"]  # fmt: skip
    assert tool.main([*args, "--only", "unet,swin_unet"]) == []
    assert list(json.loads(out.read_text())["rows"]) == ["unet", "swin_unet"]
    assert out.with_suffix(".png").is_file() and "`swin_unet`" in readme.read_text()
    assert tool.main([*args, "--only", "mcanet"]) == []  # a partial run joins the file
    merged = json.loads(out.read_text())
    assert list(merged["rows"]) == ["unet", "swin_unet", "mcanet"]
    assert merged["rows"]["mcanet"]["delta_vs_unet"]["n_images"] == 300
    assert "`mcanet`" in readme.read_text() and "placeholder" not in readme.read_text()
    assert "mcanet" in capsys.readouterr().out


# ------------------------------------------------------------------- ablation folders (--configs)
ABLATION = ROOT / "experiments/ablations/spatial_fusion"


def test_an_ablation_folder_reuses_shared_runs_and_takes_its_first_row_as_reference(
    tmp_path, doctored
):
    """A folder without unet: deltas against its first row (table order); its row shared with the
    main folder (a symlink: same name, same config) reuses the finished runs of the shared work
    dir, and only its new row trains."""
    main = _tiny_folder(tmp_path)
    run = dict(seeds=(0, 1), work_dir=tmp_path / "work", log=lambda *_: None)
    main_result = main_suite.run_main_suite(folder=main, **run)
    ablation = tmp_path / "ablation"
    ablation.mkdir()
    (ablation / "swin_unet.yaml").symlink_to("../cfg/swin_unet.yaml")
    (ablation / "swin_unet_lr.yaml").write_text(TINY.format(net="swin_unet_tiny", lr="2.0e-3"))
    doctored.clear()
    result = main_suite.run_main_suite(folder=ablation, **run)
    assert [(s["name"], s["seed"]) for s in doctored] == [("swin_unet_lr", 0), ("swin_unet_lr", 1)]
    rows = result["rows"]
    assert rows["swin_unet"]["per_seed"] == main_result["rows"]["swin_unet"]["per_seed"]
    assert main_result["protocol"]["reference_row"] == "unet"
    assert main_suite.reference_row(ablation) == "swin_unet" == result["protocol"]["reference_row"]
    assert result["protocol"]["configs"] == f"{ablation}/*.yaml"
    assert (
        list(rows) == ["swin_unet", "swin_unet_lr"] and rows["swin_unet"]["delta_vs_unet"] is None
    )
    delta = rows["swin_unet_lr"]["delta_vs_unet"]  # lr 2e-3: +0.01 in the fake
    assert delta["mean"] == pytest.approx(0.01) and delta["significant"]
    text = render_main_markdown(result)
    assert "| Delta Dice vs `swin_unet` [95 % CI] |" in text and "U-Net" not in text
    assert "| `swin_unet` (2 seeds) | 0.6200 +- 0.0141 | reference |" in text
    # a partial re-run (--only) keeps the folder's reference and table order when merged
    doctored.clear()
    partial = main_suite.run_main_suite(folder=ablation, only=["swin_unet_lr"], **run)
    assert doctored == [] and partial["protocol"]["reference_row"] == "swin_unet"
    merged = main_suite.merge(result, partial, ablation)
    assert list(merged["rows"]) == ["swin_unet", "swin_unet_lr"]
    assert merged["rows"]["swin_unet_lr"]["delta_vs_unet"]["mean"] == pytest.approx(0.01)


def test_spatial_fusion_ablation_folder_varies_only_the_fusion_of_its_reference_row():
    import inspect

    from networks.att_swinunet import AttSwinUNet

    ref = "att_swinunet_cross_spatial"
    configs = main_suite.load_configs(folder=ABLATION)  # the loader checks the shared data/eval
    assert list(configs) == [ref, f"{ref}_gated", f"{ref}_mean"]
    assert main_suite.reference_row(ABLATION) == ref
    # The ablation keeps the recipe it was run with (the main row's of 2026-11-30: stochastic
    # depth 0.1, 1200 steps), a copy: the same network and data as the main row, not its schedule.
    base, main = configs[ref][1].raw, main_suite.load_configs([ref])[ref][1].raw
    assert not (ABLATION / f"{ref}.yaml").is_symlink()
    assert (base["model"]["drop_path_rate"], base["train"]["steps"]) == (0.1, 1200)
    architecture = {k: v for k, v in main["model"].items() if k != "drop_path_rate"}
    assert {k: v for k, v in base["model"].items() if k != "drop_path_rate"} == architecture
    assert (base["data"], base["eval"], base["loss"]) == (main["data"], main["eval"], main["loss"])
    default = inspect.signature(AttSwinUNet).parameters["spatial_fusion"].default
    assert "spatial_fusion" not in base["model"] and default == "sum"
    for mode in ("mean", "gated"):
        raw = configs[f"{ref}_{mode}"][1].raw
        assert raw == {**base, "model": {**base["model"], "spatial_fusion": mode}}


def test_cli_configs_runs_a_folder_refuses_the_readme_and_checks_its_provenance(
    tmp_path, doctored, capsys
):
    tool = _tool()
    out = tmp_path / "ablation.json"
    args = ["--suite", "synthetic", "--configs", str(ABLATION), "--seeds", "0",
            "--work-dir", str(tmp_path / "work"), "--json", str(out)]  # fmt: skip
    for refused in ([*args, "--write-readme"], ["--suite", "ci", "--configs", str(ABLATION)]):
        with pytest.raises(SystemExit) as exit_info:
            tool.main(refused)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: --") and err.count("\n") == 1
    assert doctored == []
    assert tool.main(args) == []
    assert "delta vs att_swinunet_cross_spatial" in capsys.readouterr().out and len(doctored) == 3
    result = json.loads(out.read_text())
    assert result["protocol"]["configs"] == "experiments/ablations/spatial_fusion/*.yaml"
    assert tool.main(["--check-provenance", str(out), "--configs", str(ABLATION)]) == []
    assert f"provenance check of {out}: passed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # checked against the main suite's folder
        tool.main(["--check-provenance", str(out)])
    assert exit_info.value.code == 1
    assert "pass --configs experiments/ablations/spatial_fusion." in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # --only never merges another folder's rows
        tool.main(["--suite", "synthetic", "--only", "unet", "--json", str(out)])
    assert exit_info.value.code == 2 and "holds the rows of" in capsys.readouterr().err
    stale = copy.deepcopy(result)
    stale["rows"]["att_swinunet_cross_spatial_mean"]["provenance"]["config_sha256"] = "0"
    path = "benchmarks/ablation_spatial_fusion.json"
    failures, _ = ci_checks.check_provenance(stale, folder=ABLATION, json_path=path)
    assert failures == [
        "att_swinunet_cross_spatial_mean: stale - its resolved configuration changed",
        "regenerate with: python tools/benchmark.py --suite synthetic --configs experiments/"
        f"ablations/spatial_fusion --only att_swinunet_cross_spatial_mean --json {path}",
    ]


def test_jobs_run_side_by_side_and_give_the_same_table(tmp_path, monkeypatch, doctored):
    import threading

    folder = _tiny_folder(tmp_path)
    run = dict(seeds=(0, 1), folder=folder, log=lambda *_: None)
    one = main_suite.run_main_suite(**run, work_dir=tmp_path / "one")
    active, peak, lock = [0], [0], threading.Lock()
    inner = main_suite.launch

    def counting_launch(spec):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)  # long enough for the second worker to start
        try:
            return inner(spec)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(main_suite, "launch", counting_launch)
    two = main_suite.run_main_suite(**run, work_dir=tmp_path / "two", jobs=2)
    assert peak[0] == 2 and not two["failures"]
    for name, row in one["rows"].items():
        assert [s["seed"] for s in two["rows"][name]["per_seed"]] == [0, 1]
        assert two["rows"][name]["dice_mean"] == row["dice_mean"]


def test_suite_elapsed_time_is_the_union_of_the_run_intervals():
    from segmentation.benchmark.readme import suite_elapsed_s

    def result(*spans):
        seeds = [{"started_at": a, "finished_at": b} for a, b in spans]
        return {"rows": {"r": {"per_seed": seeds}}}

    # two runs side by side (0-10, 2-12), a pause between sessions, then one run (100-130)
    assert suite_elapsed_s(result((0, 10), (2, 12), (100, 130))) == 42
    assert suite_elapsed_s(result((0, 10), (10, 20))) == 20
    assert suite_elapsed_s(result((0, 10), (None, None))) is None  # older results: no timestamps
    # a run resumed in a later session counts its two sittings, not the pause between them
    resumed = {"started_at": 0, "finished_at": 130, "spans": [[0, 10], [100, 130]]}
    assert suite_elapsed_s({"rows": {"r": {"per_seed": [resumed]}}}) == 40


def test_a_child_run_stops_when_the_suite_is_killed(tmp_path):
    # The suite's parent is killed outright (SIGKILL: no handler can run); its child, which would
    # keep training for minutes, must notice and stop instead of sharing the cores with a re-run.
    child = (
        "import os, sys, time\n"
        "from segmentation.benchmark.main_suite import exit_with_parent\n"
        "exit_with_parent(os.getppid(), poll_s=0.05)\n"
        f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(900)\n"
    )
    _orphan(child, tmp_path / "child.pid", timeout_s=60)  # it polls every 0.05 s


def test_a_training_child_whose_suite_is_killed_checkpoints_its_current_step(tmp_path):
    # Between checkpoints (every 10000 steps here) a killed suite used to cost its children every
    # step since their last one; now a child stops after its current step with a checkpoint.
    child = (
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from conftest import tiny_config\n"
        "from segmentation.benchmark.main_suite import exit_with_parent\n"
        "from segmentation.training.build import run_training\n"
        "from segmentation.training.trainer import Hook\n"
        "exit_with_parent(os.getppid(), poll_s=0.05, grace_s=120)\n"
        "class Report(Hook):\n"
        "    def on_step_end(self, trainer, logs):\n"
        f"        with open({str(tmp_path / 'step')!r}, 'w') as f:\n"
        "            f.write(f'{os.getpid()} {trainer.step}')\n"
        "        time.sleep(0.05)\n"
        "cfg = tiny_config(steps=10000, eval_every=10000, checkpoint_every=10000)\n"
        f"run_training(cfg, {str(tmp_path / 'run')!r}, extra_hooks=[Report()])\n"
    )
    _, seen = _orphan(child, tmp_path / "step", ready=lambda f: len(f) == 2 and f[1] >= 3)
    from segmentation.checkpoint import load_checkpoint  # checks it is a complete checkpoint

    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert seen <= ckpt["step"] < 10000  # its current step, not the last periodic one (none)


def _orphan(child: str, report: Path, ready=lambda fields: True, timeout_s: float = 120) -> list:
    """Run the Python source ``child`` under a parent process, wait until the child has written
    its pid (and any further integers) to ``report`` and ``ready`` accepts them, kill the parent
    outright (SIGKILL) and assert that the child ends within ``timeout_s`` seconds.

    Returns the integers read from ``report`` just before the kill; never leaves a process behind.
    """
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "time.sleep(900)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT)
    pid = None
    try:
        deadline = time.monotonic() + 600  # the child imports torch: slow on a busy machine
        while True:
            fields = [int(x) for x in report.read_text().split()] if report.is_file() else []
            if fields and ready(fields):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the child never got ready"
            time.sleep(0.05)
        pid = fields[0]
        assert _alive(pid)  # running while its parent is
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + timeout_s  # the margin is for a busy machine
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the child kept running after its suite was killed"
        return fields
    finally:
        proc.kill()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process that nobody reaped yet, a zombie, does not)."""
    if Path("/proc/self/stat").is_file():  # Linux: the state field after the command name
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_only_refuses_to_mix_thread_counts_and_the_command_names_them(tmp_path, capsys, doctored):
    """Results depend on --threads: a partial re-run (--only) into a JSON made with another
    thread count is refused before training, and the regenerate command carries the count."""
    tool = _tool()
    out = tmp_path / "synthetic.json"
    made = {"threads": 1, "configs": "experiments/synthetic/*.yaml"}
    out.write_text(json.dumps({"protocol": made, "rows": {}}))
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--suite", "synthetic", "--only", "unet", "--json", str(out),
                   "--work-dir", str(tmp_path / "work")])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "made with --threads 1" in err and "Pass --threads 1" in err
    assert doctored == [] and not (tmp_path / "work").exists()
    assert ci_checks.regenerate_command(["unet"], threads=1, jobs=2) == (
        "python tools/benchmark.py --suite synthetic --only unet --jobs 2 --threads 1 "
        "--json benchmarks/synthetic.json --write-readme"
    )
    default = ci_checks.regenerate_command(["unet"])
    assert ci_checks.regenerate_command(["unet"], threads=2) == default
    from segmentation.cli import benchmark as cli  # its --threads default is DEFAULT_THREADS

    assert cli.parse_args(["--suite", "synthetic"]).threads == ci_checks.DEFAULT_THREADS


def test_the_table_names_the_command_that_made_it():
    from segmentation.benchmark.readme import made_with

    assert made_with({"threads": 2}) == (
        "python tools/benchmark.py --suite synthetic --json benchmarks/synthetic.json "
        "--write-readme"
    )
    assert made_with({"threads": 1, "jobs": 2}) == (
        "python tools/benchmark.py --suite synthetic --jobs 2 --threads 1 "
        "--json benchmarks/synthetic.json --write-readme"
    )


def test_jobs_or_threads_below_one_is_a_named_error_first(tmp_path, capsys, doctored):
    tool = _tool()
    for flag in (["--jobs", "0"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            tool.main(["--suite", "synthetic", "--work-dir", str(tmp_path / "work"), *flag])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "--jobs and --threads must be at least 1" in err
    assert doctored == [] and not (tmp_path / "work").exists()
    with pytest.raises(ValueError, match="jobs .* at least 1, got 0"):
        main_suite.run_main_suite(jobs=0, work_dir=tmp_path / "work", log=lambda *_: None)
