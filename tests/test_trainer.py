import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
from segmentation.config import validate
from segmentation.training.build import run_training
from segmentation.training.trainer import Hook

ROOT = Path(__file__).resolve().parents[1]


def tiny(steps=4, **train):
    return tiny_config(steps, log_every=1, image_panel_every=2, **train)


def test_training_writes_run_folder(tmp_path):
    metrics = run_training(tiny(), tmp_path)
    assert (tmp_path / "config.yaml").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert {"model_spec", "model", "config", "optimizer", "step", "best", "rng"} <= set(ckpt)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "val" and saved["n_images"] == 4
    assert saved["per_image"]["dice"] == pytest.approx(metrics["per_image"]["dice"])


def test_validation_reads_the_validation_split(tmp_path):
    from segmentation.training.build import build_dataset

    config = tiny()
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert val.split == "val" and not set(train.ids) & set(val.ids)


class Interrupted(Exception):
    pass


class StopAt(Hook):
    """Simulates a run killed right after the checkpoint of step ``step`` was written."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, logs):
        if trainer.step == self.step:
            raise Interrupted


def test_resume_gives_identical_weights(tmp_path):
    run_training(tiny(steps=4), tmp_path / "straight")
    with pytest.raises(Interrupted):
        run_training(tiny(steps=4), tmp_path / "split", extra_hooks=[StopAt(2)])
    half = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert half["step"] == 2
    run_training(tiny(steps=4), tmp_path / "split", resume=half)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{key} differs after resume"


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    from segmentation.registry import LOSSES

    calls = {"n": 0}

    def nan_at_third_step(logits, mask):
        calls["n"] += 1
        loss = logits.float().mean() * 0 + torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], mask.float()
        )
        return loss * float("nan") if calls["n"] == 3 else loss

    if "nan_at_third_step" not in LOSSES:
        LOSSES.register("nan_at_third_step", lambda: nan_at_third_step)
    config = validate({**tiny().raw, "loss": {"name": "nan_at_third_step"}})
    with pytest.raises(FloatingPointError, match="at step 3"):
        run_training(config, tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    run_training(tiny(steps=2), tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    bad = tmp_path / "broken.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="broken.pt.*unreadable or truncated"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_rebuilds_the_model(tmp_path):
    run_training(tiny(steps=2), tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    model = model_from_checkpoint(ckpt).eval()
    x = torch.randn(1, 3, 32, 32)
    assert model(x).shape == (1, 1, 32, 32)


def test_cli_train_resume_and_evaluate(tmp_path):
    cfg = tmp_path / "c.yaml"
    from segmentation.config import dump_config

    dump_config(tiny(steps=2), cfg)
    run = tmp_path / "run"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    py = sys.executable
    out = subprocess.run(
        [py, "tools/train.py", "--cfg", str(cfg), "--out", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [py, "tools/train.py", "--resume", str(run), "--set", "train.steps=4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    ev = tmp_path / "eval"
    out = subprocess.run(
        [
            py,
            "tools/evaluate.py",
            "--ckpt",
            str(run / "checkpoints" / "best.pt"),
            "--split",
            "test",
            "--out",
            str(ev),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["per_image"]) >= {
        "dice",
        "iou",
        "thresholded_jaccard",
        "sensitivity",
        "specificity",
        "accuracy",
        "hd95",
        "assd",
    }
    assert metrics["n_images"] == 4 and metrics["split"] == "test"
    assert len((ev / "per_image.csv").read_text().strip().splitlines()) == 5
    bad = subprocess.run(
        [py, "tools/train.py", "--cfg", str(tmp_path / "nope.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "nope.yaml" in bad.stderr


def test_checkpoint_rebuilds_without_the_pretrained_file(tmp_path):
    import networks

    net = networks.build_network("smp_unet_tiny", in_channels=3, num_classes=1)
    weights = tmp_path / "resnet18.pth"
    torch.save(net.model.encoder.state_dict(), weights)
    raw = tiny(steps=2).raw
    raw["model"] = {"name": "smp_unet_tiny", "encoder_weights": str(weights)}
    run_training(validate(raw), tmp_path / "run")
    weights.unlink()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    model = model_from_checkpoint(ckpt)
    for key, value in ckpt["model"].items():
        assert torch.equal(model.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="resnet18.pth"):
        networks.build_network(
            "smp_unet_tiny", in_channels=3, num_classes=1, encoder_weights=str(weights)
        )


class RecordWeights(Hook):
    """The weights at the start and after every step (copies)."""

    def __init__(self):
        self.weights = []

    def _record(self, trainer):
        state = trainer.model.state_dict()
        self.weights.append({k: v.detach().clone() for k, v in state.items()})

    def on_fit_start(self, trainer):
        self._record(trainer)

    def on_step_end(self, trainer, logs):
        self._record(trainer)


def test_ema_follows_the_warmed_up_recursion_and_is_what_validation_and_best_pt_hold(tmp_path):
    """e_0 = initial weights, e_n = e_(n-1) + (1 - d_n)(w_n - e_(n-1)), d_n = min(decay, (1 + n)
    / (10 + n)); integer buffers (BatchNorm's batch counter) are copied."""
    record = RecordWeights()
    config = tiny(steps=4, ema_decay=0.6, eval_every=4)
    run_training(config, tmp_path, extra_hooks=[record])
    expected = record.weights[0]
    for n, weights in enumerate(record.weights[1:], start=1):
        d = min(0.6, (1 + n) / (10 + n))
        expected = {
            k: e + (1 - d) * (weights[k] - e) if e.is_floating_point() else weights[k]
            for k, e in expected.items()
        }
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["ema_updates"] == 4
    for key, value in record.weights[-1].items():
        assert torch.equal(last["train_model"][key], value), key  # the trained weights
        torch.testing.assert_close(last["model"][key], expected[key], rtol=1e-5, atol=1e-6)
    assert any(  # the average is not the last weights
        not torch.equal(last["model"][k], v) for k, v in record.weights[-1].items()
    )
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    for key, value in last["model"].items():  # step 4 validated the average and saved it
        assert torch.equal(best["model"][key], value), key
    # evaluating best.pt's weights reproduces the validation metric of the run
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model
    from segmentation.training.build import build_dataset

    metrics, _ = evaluate_model(
        model_from_checkpoint(best).eval(),
        build_dataset(config, "val"),
        device=torch.device("cpu"),
        eval_config=config.eval,
        boundary=False,
        collate_fn=collate,
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["per_image"]["dice"] == pytest.approx(saved["per_image"]["dice"], abs=1e-6)


def test_resume_with_ema_gives_identical_average_and_weights(tmp_path):
    cfg = dict(steps=4, ema_decay=0.7)
    run_training(tiny(**cfg), tmp_path / "straight")
    with pytest.raises(Interrupted):
        run_training(tiny(**cfg), tmp_path / "split", extra_hooks=[StopAt(2)])
    run_training(
        tiny(**cfg),
        tmp_path / "split",
        resume=load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt"),
    )
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] == 4
    for part in ("model", "train_model"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"


def test_without_ema_checkpoints_are_unchanged(tmp_path):
    run_training(tiny(steps=2), tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert "train_model" not in ckpt and "ema_updates" not in ckpt
