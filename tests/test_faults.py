"""DDP, fault tolerance, bad data and determinism: no silent wrong result, no lost run.

The one-line errors of bad input (``error: ...``, exit 2) are tested in ``test_bad_input.py``.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_config as tiny

from segmentation.checkpoint import find_resumable, load_checkpoint, save_checkpoint
from segmentation.cli import train as train_cli
from segmentation.config import ConfigError, dump_config, validate
from segmentation.errors import DataError, NonFiniteError, RunStopped
from segmentation.training.build import run_training
from segmentation.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DERMSEG_NO_MALLOC_TUNING": "1"}


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=timeout
    )


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    for key, value in wa.items():
        assert torch.equal(value, wb[key]), f"{key} differs"


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_evaluation(tmp_path):
    # 20 steps of a BatchNorm network: each rank's running statistics drift apart, so without the
    # broadcast of rank 0's buffers the sharded validation differs from evaluating last.pt.
    from segmentation.checkpoint import model_from_checkpoint
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model
    from segmentation.training.build import build_dataset

    data = {"name": "synthetic", "image_size": 32, "n_train": 16, "n_val": 16, "n_test": 4}
    raw = tiny(steps=20, eval_every=10, checkpoint_every=10, data=data).raw
    cfg = tmp_path / "c.yaml"
    dump_config(validate({**raw, "optim": {"name": "adamw", "lr": 3.0e-2}}), cfg)
    run = tmp_path / "ddp"
    out = run_cli(
        "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "tools/train.py", "--cfg", str(cfg), "--out", str(run),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "effective batch 8 = 4 per process x 2 process(es)" in out.stdout
    ddp = json.loads((run / "metrics.json").read_text())
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    config = validate(ckpt["config"])
    single, _ = evaluate_model(
        model_from_checkpoint(ckpt),
        build_dataset(config, "val", train=False),
        device=torch.device("cpu"),
        eval_config=config.eval,
        boundary=False,
        collate_fn=collate,
    )
    assert ddp["n_images"] == single["n_images"] == 16
    assert 0 < single["per_image"]["dice"] < 1  # predictions near the threshold can flip
    for key in ("dice", "iou", "thresholded_jaccard", "sensitivity", "accuracy"):
        assert ddp["per_image"][key] == single["per_image"][key], key
    assert ddp["global"] == single["global"]


KILL_DURING_SECOND_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
import segmentation.checkpoint as ck
calls = {{"n": 0}}
real_save = torch.save
def dying_save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == {kill_at}:
        f.write(b"PK partial checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
ck.torch.save = dying_save
sys.argv = ["train.py", "--cfg", {cfg!r}, "--out", {out!r}]
from segmentation.cli import train
sys.exit(train.main(sys.argv[1:]))
"""


def test_sigkill_during_checkpoint_write_then_resume_matches(tmp_path):
    cfg = tmp_path / "c.yaml"
    dump_config(tiny(steps=6), cfg)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli("tools/train.py", "--cfg", str(cfg), "--out", str(straight)).returncode == 0
    # torch.save calls: step 2 -> best.pt, step_2.pt; step 4 -> best.pt?, step_4.pt ... kill in
    # the third write, which is during step 4's checkpoints.
    script = KILL_DURING_SECOND_SAVE.format(
        root=str(ROOT), tools=str(ROOT / "tools"), cfg=str(cfg), out=str(killed), kill_at=3
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True)
    assert out.returncode == -signal.SIGKILL
    assert list((killed / "checkpoints").glob(".*.tmp-*")), "the kill should leave a partial file"
    assert load_checkpoint(find_resumable(killed))["step"] == 2
    out = run_cli("tools/train.py", "--resume", str(killed))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "from last.pt (step 2)" in out.stdout
    assert not list((killed / "checkpoints").glob(".*.tmp-*"))
    same_weights(straight / "checkpoints" / "last.pt", killed / "checkpoints" / "last.pt")


def test_sigterm_writes_a_final_checkpoint_and_exits_non_zero_with_the_resume_command(tmp_path):
    cfg = tmp_path / "c.yaml"
    dump_config(tiny(steps=400, checkpoint_every=200, eval_every=200), cfg)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "tools/train.py", "--cfg", str(cfg), "--out", str(run)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (run / "tb").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_by"] == "SIGTERM"
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 400 and metrics["step"] == step
    assert f"stopped by SIGTERM at step {step} of 400" in stderr
    assert f"Resume with: python tools/train.py --resume {run}" in stderr
    assert "done in" not in stdout


def test_resume_auto_skips_a_truncated_checkpoint_and_keeps_last_k(tmp_path):
    run_training(tiny(steps=8, keep_checkpoints=2), tmp_path)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*.pt")) == [
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    # Replace last.pt (a link to step 8) and step 8 by truncated files.
    for name in ("last.pt", "step_00000008.pt"):
        data = (folder / name).read_bytes()
        (folder / name).unlink()
        (folder / name).write_bytes(data[:500])
    with pytest.warns(UserWarning, match="unreadable or truncated"):
        path = find_resumable(tmp_path)
    assert path.name == "step_00000006.pt"
    cfg = tmp_path / "c.yaml"
    dump_config(tiny(steps=8, keep_checkpoints=2), cfg)
    out = run_cli("tools/train.py", "--cfg", str(cfg), "--out", str(tmp_path), "--resume", "auto")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "from step_00000006.pt (step 6)" in out.stdout
    assert load_checkpoint(folder / "last.pt")["step"] == 8


def write_folder(root: Path, n: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 8:20] = 255
            cv2.imwrite(str(root / split / "images" / f"img{i:02d}.png"), image)
            cv2.imwrite(str(root / split / "masks" / f"img{i:02d}.png"), mask)
    (root / "train" / "images" / "img03.png").write_bytes(b"not a png")
    cv2.imwrite(str(root / "train" / "masks" / "img05.png"), np.zeros((16, 16), np.uint8))


def test_bad_data_raise_names_the_file_and_skip_reports_two(tmp_path):
    write_folder(tmp_path / "data")
    data = {"name": "paired_folder", "root": str(tmp_path / "data"), "image_size": 32}
    with pytest.raises(ValueError, match=r"img0[35]\.png"):
        run_training(tiny(steps=4, data=data), tmp_path / "raise")
    data_skip = {**data, "on_error": "skip", "max_skip_fraction": 0.25}
    with pytest.warns(UserWarning, match="skipped img03"):
        run_training(tiny(steps=4, data=data_skip), tmp_path / "skip")
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    skipped = metrics["skipped_files"]["train"]
    assert sorted(item["id"] for item in skipped) == ["img03", "img05"]
    assert any("16x16" in item["error"] for item in skipped)
    with pytest.raises(DataError, match="more than data.max_skip_fraction"):
        run_training(tiny(steps=4, data={**data_skip, "max_skip_fraction": 0.1}), tmp_path / "x")


def nan_loss_at(steps):
    calls = {"n": 0}

    def loss(logits, mask):
        calls["n"] += 1
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask.float())
        return value * float("nan") if calls["n"] in steps else value

    return loss


def test_nonfinite_steps_are_skipped_and_counted_or_stop(tmp_path):
    from segmentation.registry import LOSSES

    if "nan_at_2" not in LOSSES:
        LOSSES.register("nan_at_2", lambda: nan_loss_at({2}))
        LOSSES.register("nan_always", lambda: nan_loss_at(set(range(100))))
    config = validate({**tiny().raw, "loss": {"name": "nan_at_2"}})
    config = validate({**config.raw, "train": {**config.raw["train"], "nonfinite": "skip"}})
    run_training(config, tmp_path / "skip")
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["nonfinite_steps_skipped"] == 1 and metrics["step"] == 4
    raw = {**config.raw, "loss": {"name": "nan_always"}}
    raw["train"] = {**raw["train"], "max_nonfinite": 2}
    with pytest.raises(NonFiniteError, match="2 consecutive non-finite steps"):
        run_training(validate(raw), tmp_path / "stop")


def test_deterministic_runs_give_identical_metrics(tmp_path):
    a = run_training(tiny(steps=3, deterministic=True), tmp_path / "a")
    b = run_training(tiny(steps=3, deterministic=True), tmp_path / "b")
    torch.use_deterministic_algorithms(False)
    assert a == b
    same_weights(
        tmp_path / "a" / "checkpoints" / "last.pt", tmp_path / "b" / "checkpoints" / "last.pt"
    )


# -- masks stored as {0, 1}, all-empty splits ---------------------------------------------------


def write_pairs(root: Path, masks: dict[str, np.ndarray], size: int = 32) -> None:
    """``root/{train,val}/{images,masks}``: random images, the given mask per split."""
    rng = np.random.default_rng(0)
    for split, mask in masks.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(8):
            image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            cv2.imwrite(str(root / split / "images" / f"img{i:02d}.png"), image)
            cv2.imwrite(str(root / split / "masks" / f"img{i:02d}.png"), mask)


def test_masks_stored_as_zero_one_are_refused_with_the_fix(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1  # a converted dataset: lesion = 1, not 255
    write_pairs(tmp_path / "data", {"train": mask, "val": mask})
    data = {"name": "paired_folder", "root": str(tmp_path / "data"), "image_size": 32}
    with pytest.raises(DataError, match=r"img00\.png' has maximum value 1.*mask_threshold: 0"):
        run_training(tiny(steps=2, data=data), tmp_path / "run")
    assert not (tmp_path / "run").exists(), "a run that fails at set-up writes nothing"
    metrics = run_training(tiny(steps=2, data={**data, "mask_threshold": 0}), tmp_path / "ok")
    assert metrics["per_image"]["dice"] < 1.0  # the lesion is read, not an empty/empty 1.0


def test_a_split_whose_masks_are_all_empty_is_refused(tmp_path):
    lesion = np.zeros((32, 32), np.uint8)
    lesion[8:24, 8:24] = 255
    write_pairs(tmp_path / "data", {"train": lesion, "val": np.zeros((32, 32), np.uint8)})
    data = {"name": "paired_folder", "root": str(tmp_path / "data"), "image_size": 32}
    with pytest.raises(DataError, match="every one of the 8 masks of split 'val'.*is empty"):
        run_training(tiny(steps=2, data=data), tmp_path / "run")


# -- non-finite values --------------------------------------------------------------------------


def test_a_skipped_nan_batch_leaves_batchnorm_statistics_finite(tmp_path, monkeypatch):
    to_device = Trainer.to_device

    def nan_pixel_at_step_2(trainer, batch):
        batch = to_device(trainer, batch)
        if trainer.step == 1:  # the batch of step 2
            batch["image"] = batch["image"].clone()
            batch["image"][0, 0, 0, 0] = float("nan")
        return batch

    monkeypatch.setattr(Trainer, "to_device", nan_pixel_at_step_2)
    metrics = run_training(tiny(steps=4, nonfinite="skip"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["nonfinite_steps_skipped"] == 1
    for name in ("last.pt", "best.pt"):
        for key, value in load_checkpoint(tmp_path / "checkpoints" / name)["model"].items():
            assert torch.isfinite(value.float()).all(), f"{name}: {key} is not finite"
    assert np.isfinite(metrics["per_image"]["dice"])


def test_a_step_that_overflows_batchnorm_statistics_is_non_finite(tmp_path, monkeypatch):
    # Loss and gradients stay finite, but the running variance of a 1e30-scaled batch is inf.
    to_device = Trainer.to_device

    def huge_batch_at_step_2(trainer, batch):
        batch = to_device(trainer, batch)
        if trainer.step == 1:
            batch["image"] = batch["image"] * 1.0e30
        return batch

    monkeypatch.setattr(Trainer, "to_device", huge_batch_at_step_2)
    with pytest.raises(NonFiniteError, match=r"non-finite buffer '.*running_var'.*at step 2"):
        run_training(tiny(steps=4), tmp_path / "stop")
    run_training(tiny(steps=4, nonfinite="skip"), tmp_path / "skip")
    saved = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert saved["nonfinite_steps_skipped"] == 1 and np.isfinite(saved["per_image"]["dice"])


def test_a_diverged_network_stops_at_validation_with_a_non_finite_error(tmp_path):
    raw = tiny(steps=4, nonfinite="skip").raw
    raw = {**raw, "optim": {"name": "adamw", "lr": 1.0e6}, "sched": {"name": "constant"}}
    with pytest.raises(NonFiniteError, match="validation at step 2: logits contain NaN or inf"):
        run_training(validate(raw), tmp_path)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    path = tmp_path / "ckpt.pt"
    weights = {"conv.weight": torch.ones(2), "bn.running_var": torch.tensor([1.0, float("nan")])}
    with pytest.raises(NonFiniteError, match="bn.running_var"):
        save_checkpoint(path, {"model": weights, "step": 3})
    assert not path.exists() and not list(tmp_path.iterdir())


# -- resume, checkpoints, selection -------------------------------------------------------------


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_failed_resume_leaves_the_run_as_it_was(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DERMSEG_DEBUG", raising=False)
    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    dump_config(tiny(steps=2), cfg)
    assert train_cli.main(["--cfg", str(cfg), "--out", str(run)]) == 0
    before = files_of(run)
    capsys.readouterr()
    code = train_cli.main(["--resume", str(run), "--set", "model.base_width=16"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "base_width: checkpoint unset, now 16" in err
    assert files_of(run) == before
    other = tmp_path / "other.yaml"  # --resume auto with a different network
    raw = tiny(steps=4).raw
    dump_config(validate({**raw, "model": {"name": "unet_tiny", "depth": 2}}), other)
    assert train_cli.main(["--cfg", str(other), "--out", str(run), "--resume", "auto"]) == 2
    assert "depth: checkpoint unset, now 2" in capsys.readouterr().err
    assert files_of(run) == before
    assert train_cli.main(["--resume", str(run), "--set", "train.steps=4"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4


def test_hd95_as_selection_metric_computes_it_and_writes_best(tmp_path):
    raw = tiny(steps=8).raw  # lr 3e-2: non-empty predictions (HD95 is NaN for empty ones)
    raw = {**raw, "optim": {"name": "adamw", "lr": 3.0e-2}}
    run_training(validate({**raw, "eval": {**raw["eval"], "metric": "hd95"}}), tmp_path)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["best"]
    assert best["metric"] == "hd95" and np.isfinite(best["value"]) and best["step"] > 0
    assert np.isfinite(json.loads((tmp_path / "metrics.json").read_text())["per_image"]["hd95"])


def test_keep_checkpoints_zero_keeps_only_last_and_best(tmp_path):
    run_training(tiny(steps=4, keep_checkpoints=0), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4
    with pytest.raises(ConfigError, match="train.keep_checkpoints = -1 is out of range"):
        tiny(keep_checkpoints=-1)


def test_request_stop_stops_like_sigterm_and_a_later_signal_is_still_the_first(tmp_path):
    # The suite's child watcher stops a run with request_stop (no signal). If the SIGTERM that
    # killed the suite arrives afterwards, it must not count as a second signal (which ends the
    # process at once, without the checkpoint).
    from segmentation.distributed import StopRequest, request_stop
    from segmentation.training.trainer import Hook

    assert request_stop("test") is False  # no training loop in this process: nothing to stop
    with StopRequest() as stop:
        assert request_stop("the suite's exit") and stop.requested == "the suite's exit"
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: no KeyboardInterrupt
        time.sleep(0.01)
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a real second signal still ends it at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)

    class StopAt2(Hook):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                assert request_stop("the suite's exit")

    with pytest.raises(RunStopped, match=r"stopped by the suite's exit at step 3 of 8") as info:
        run_training(tiny(steps=8, checkpoint_every=8), tmp_path, extra_hooks=[StopAt2()])
    assert info.value.reason == "the suite's exit"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3


def test_run_training_raises_run_stopped_after_writing_the_checkpoint(tmp_path):
    from segmentation.training.trainer import Hook

    class SigtermAt2(Hook):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunStopped, match=r"stopped by SIGTERM at step 3 of 8.*--resume") as info:
        run_training(tiny(steps=8), tmp_path, extra_hooks=[SigtermAt2()])
    assert info.value.reason == "SIGTERM"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3
