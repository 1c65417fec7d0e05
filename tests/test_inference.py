"""Inference (TTA, sliding window, uncertainty), tools/predict.py, export parity, evaluation reports
and model cards, on a 2-step unet_tiny run trained once per module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import networks
from segmentation.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from segmentation.inference.predictors import (
    FlipTTAPredictor,
    Predictor,
    SlidingWindowPredictor,
    build_predictor,
    logits_from_probabilities,
    probabilities,
)
from segmentation.training.build import run_training

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import tiny_config as tiny  # noqa: E402

SIZE = 32  # training image size of tiny()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    run_training(tiny(steps=2), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def ckpt_path(run):
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def model(ckpt_path):
    return model_from_checkpoint(load_checkpoint(ckpt_path)).eval()


def _fake_ckpt(path: Path, name: str) -> Path:
    """A checkpoint of an untrained ``name`` network with the tiny() config (no training)."""
    torch.manual_seed(0)
    net = networks.build_network(name, in_channels=3, num_classes=1)
    raw = tiny().raw
    raw["model"] = {"name": name}
    spec = {"name": name, "kwargs": {"in_channels": 3, "num_classes": 1}}
    save_checkpoint(
        path, {"model_spec": spec, "model": net.state_dict(), "config": raw, "step": 0, "best": {}}
    )
    return path


def _write_images(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (45, 70), "b.jpg": (80, 123)}  # non-square, not the training size
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (folder / "corrupt.png").write_bytes(b"\x89PNG truncated")
    (folder / "notes.txt").write_text("not an image, ignored")
    return sizes


# -- predictors ------------------------------------------------------------------------------------


def test_flip_tta_is_the_mean_of_unflipped_probabilities(model):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        manual = (
            sum(
                model(x.flip(d) if d else x).sigmoid().flip(d) if d else model(x).sigmoid()
                for d in ((), (-1,), (-2,), (-2, -1))
            )
            / 4
        )
        probs, variance = FlipTTAPredictor("flips").probabilities_and_uncertainty(model, x)
        logits = FlipTTAPredictor("flips")(model, x)
    assert variance is None
    assert logits.shape == (2, 1, SIZE, SIZE)
    torch.testing.assert_close(probs, manual, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits.sigmoid(), manual, atol=1e-5, rtol=0)
    # the identity view is one of the four: TTA differs from the plain prediction in general
    assert not torch.allclose(probs, model(x).sigmoid().detach())


def test_logits_from_probabilities_inverts_for_one_and_several_channels():
    logits = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(logits_from_probabilities(probabilities(logits)), logits)
    multi = torch.randn(2, 3, 4, 4)
    back = probabilities(logits_from_probabilities(probabilities(multi)))
    torch.testing.assert_close(back, probabilities(multi))


def test_predictor_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown flip set 'rot90'"):
        FlipTTAPredictor("rot90")
    with pytest.raises(ValueError, match="spatial dims -1"):
        FlipTTAPredictor(((0,),))
    with pytest.raises(ValueError, match="overlap must be in"):
        SlidingWindowPredictor(SIZE, overlap=1.0)
    with pytest.raises(ValueError, match="roi_size"):
        SlidingWindowPredictor(0)


def test_sliding_window_on_a_larger_image(model):
    big = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = SlidingWindowPredictor(SIZE, overlap=0.5, sw_batch_size=3)(model, big)
        # one window covering the whole image: Gaussian weights cancel, plain prediction back
        one = torch.randn(1, 3, SIZE, SIZE)
        single = SlidingWindowPredictor(SIZE)(model, one)
    assert logits.shape == (1, 1, 70, 90) and torch.isfinite(logits).all()
    torch.testing.assert_close(single.sigmoid(), model(one).sigmoid(), atol=1e-5, rtol=0)


def test_tta_predictor_plugs_into_evaluate_model(model):
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model
    from segmentation.training.build import build_dataset

    config = tiny()
    dataset = build_dataset(config, "val", train=False)
    metrics, rows = evaluate_model(
        model,
        dataset,
        device=torch.device("cpu"),
        eval_config=config.eval,
        collate_fn=collate,
        predictor=build_predictor(tta="flips"),
    )
    assert metrics["n_images"] == len(dataset) == len(rows)


def test_generative_uncertainty_through_tta_and_windows():
    net = networks.build_network("segdt_tiny", in_channels=3, num_classes=1).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    base = Predictor(uncertainty=True, n_samples=2)
    with torch.no_grad():
        for predictor in (base, FlipTTAPredictor("hflip", base=base)):
            probs, variance = predictor.probabilities_and_uncertainty(net, x)
            assert probs.shape == variance.shape == (1, 1, SIZE, SIZE)
            assert 0 <= float(variance.min()) and float(variance.max()) <= 0.25 + 1e-6
        probs, variance = SlidingWindowPredictor(SIZE, base=base).probabilities_and_uncertainty(
            net, torch.randn(1, 3, 40, 48)
        )
    assert probs.shape == variance.shape == (1, 1, 40, 48)


# -- tools/predict.py ------------------------------------------------------------------------------


def test_predict_folder_skips_corrupt_files(ckpt_path, tmp_path, capsys):
    from segmentation.cli import predict

    sizes = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    code = predict.main(
        ["--ckpt", str(ckpt_path), "--input", str(tmp_path / "in"), "--out", str(out)]
        + ["--tta", "flips", "--batch", "2"]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file(s)" in err and "corrupt.png" in err
    for name, (h, w) in sizes.items():
        stem = Path(name).stem
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w), f"{name}: mask {mask.shape} is not the original size"
        assert set(np.unique(mask)) <= {0, 255}
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (h, w, 3)
    assert not (out / "masks" / "corrupt.png").exists()
    assert not (out / "uncertainty").exists()  # unet has no uncertainty
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + len(sizes)


def test_predict_sliding_window_keeps_native_size(ckpt_path, tmp_path):
    from segmentation.cli import predict

    image = tmp_path / "big.png"
    cv2.imwrite(str(image), np.full((75, 101, 3), 128, np.uint8))
    out = tmp_path / "out"
    argv = ["--ckpt", str(ckpt_path), "--input", str(image), "--out", str(out)]
    assert predict.main([*argv, "--sliding-window"]) == 0
    assert cv2.imread(str(out / "masks" / "big.png"), 0).shape == (75, 101)


def test_predict_exit_codes(ckpt_path, tmp_path):
    from segmentation.cli import predict

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    argv = ["--ckpt", str(ckpt_path), "--out", str(tmp_path / "out")]
    assert predict.main([*argv, "--input", str(bad)]) == 1  # every file failed
    assert predict.main([*argv, "--input", str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict.main([*argv, "--input", str(empty)]) == 2


def test_predict_writes_uncertainty_for_generative_networks(tmp_path):
    from segmentation.cli import predict

    ckpt = _fake_ckpt(tmp_path / "segdt.pt", "segdt_tiny")
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.full((40, 56, 3), 90, np.uint8))
    out = tmp_path / "out"
    argv = ["--ckpt", str(ckpt), "--input", str(image), "--out", str(out), "--n-samples", "2"]
    assert predict.main(argv) == 0
    assert cv2.imread(str(out / "uncertainty" / "img.png")).shape == (40, 56, 3)
    assert "mean_variance" in (out / "predictions.csv").read_text()


# -- export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_unet(ckpt_path, tmp_path, fmt):
    from segmentation.cli import export

    out = tmp_path / f"model.{fmt}"
    argv = ["--ckpt", str(ckpt_path), "--format", fmt, "--out", str(out)]
    assert export.main(argv) == 0
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["dynamic_batch"] and meta["dynamic_size"]
    assert set(meta["max_abs_diff"]) == {"1x3x32x32", "2x3x32x32", "3x3x32x32", "1x3x64x96"}
    assert max(meta["max_abs_diff"].values()) <= 1e-4
    from segmentation.inference.export import load_exported

    x = np.random.default_rng(0).standard_normal((2, 3, 48, 80)).astype(np.float32)
    with torch.no_grad():
        expected = model_from_checkpoint(load_checkpoint(ckpt_path)).eval()(torch.from_numpy(x))
    assert np.abs(load_exported(fmt, out)(x) - expected.numpy()).max() <= 1e-4


def test_export_swin_fixes_the_image_size(tmp_path):
    from segmentation.inference.export import export_checkpoint, load_exported

    ckpt = load_checkpoint(_fake_ckpt(tmp_path / "swin.pt", "swin_unet_tiny"))
    meta = export_checkpoint(ckpt, "torchscript", tmp_path / "swin.pt2", image_size=64)
    assert meta["dynamic_batch"] and not meta["dynamic_size"]
    assert meta["other_size_diff"] > 1e-4  # the trace froze the window arithmetic
    assert max(meta["max_abs_diff"].values()) <= 1e-4
    with pytest.raises(Exception, match="accepts images of 64x64"):
        load_exported("torchscript", tmp_path / "swin.pt2")(np.zeros((1, 3, 96, 128), np.float32))


def test_export_refuses_sampling_networks(tmp_path, capsys):
    from segmentation.cli import export
    from segmentation.inference.export import ExportError, export_checkpoint

    ckpt = _fake_ckpt(tmp_path / "segdt.pt", "segdt_tiny")
    with pytest.raises(ExportError, match=r"predict\(\)"):
        export_checkpoint(load_checkpoint(ckpt), "onnx", tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="unknown export format"):
        export_checkpoint(load_checkpoint(ckpt), "tflite", tmp_path / "x")
    argv = ["--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]
    assert export.main(argv) == 1
    assert "predict()" in capsys.readouterr().err


# -- reports and model cards -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(ckpt_path, tmp_path_factory):
    from segmentation.cli import evaluate

    out = tmp_path_factory.mktemp("eval")
    argv = ["--ckpt", str(ckpt_path), "--split", "test", "--out", str(out)]
    assert evaluate.main([*argv, "--no-boundary", "--report", str(out / "report")]) == 0
    return out


def test_evaluate_report_has_markdown_and_figures(evaluation):
    report = evaluation / "report"
    text = (report / "report.md").read_text()
    for heading in ("## Metrics", "## Per-image dice", "## Best and worst cases", "## Training"):
        assert heading in text
    figures = ("dice_histogram.png", "cases_best.png", "cases_worst.png", "training_curves.png")
    for name in figures:
        assert (report / name).stat().st_size > 1000, f"{name} is missing or empty"
        assert f"]({name})" in text


def test_report_group_sections(evaluation, tmp_path):
    from segmentation.evaluation.groups import group_report
    from segmentation.reporting.figures import write_report

    metrics = json.loads((evaluation / "metrics.json").read_text())
    rows = [
        {"id": str(i), "dice": d, "tone": t}
        for i, (d, t) in enumerate(
            [(0.9, "light"), (0.8, "light"), (0.5, "dark"), (0.7, "dark"), (0.6, "dark")]
        )
    ]
    metrics["groups"] = {"tone": group_report(rows, "tone", n_boot=50)}
    path = write_report(tmp_path, metrics=metrics, rows=rows, title="groups", run_dir=None)
    text = path.read_text()
    assert "## dice by tone" in text and "| dark | 3 |" in text
    assert (tmp_path / "groups_tone.png").stat().st_size > 1000
    assert "No TensorBoard events" in text


def test_model_card_sections(ckpt_path, evaluation, tmp_path):
    from segmentation.cli import model_card
    from segmentation.reporting.model_card import CARD_SECTIONS, config_hash

    out = tmp_path / "MODEL_CARD.md"
    argv = ["--ckpt", str(ckpt_path), "--eval", str(evaluation), "--out", str(out)]
    assert model_card.main(argv) == 0
    card = out.read_text()
    for section in CARD_SECTIONS:
        assert f"## {section}" in card, f"section '{section}' missing"
    ckpt = load_checkpoint(ckpt_path)
    assert f"sha256:{config_hash(ckpt['config'])}" in card
    assert "not a medical device" in card and "unet_tiny" in card
    assert "thresholded_jaccard" in card  # metric definitions come from metrics.json
    assert "dice by ita_group" in card  # skin-tone groups from per_image.csv
    assert "python tools/evaluate.py" in card and "python tools/model_card.py" in card
    assert model_card.main([*argv[:2], "--eval", str(tmp_path / "none")]) == 2


def test_config_hash_is_canonical():
    from segmentation.reporting.model_card import config_hash

    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_evaluate_sampling_steps_table(tmp_path):
    ckpt = _fake_ckpt(tmp_path / "segdt.pt", "segdt_tiny")
    out = tmp_path / "ev"
    proc = subprocess.run(
        [sys.executable, "tools/evaluate.py", "--ckpt", str(ckpt), "--split", "val",
         "--out", str(out), "--no-boundary", "--sampling-steps", "1,2"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = json.loads((out / "metrics.json").read_text())["sampling_steps"]
    assert [row["steps"] for row in sweep] == [1, 2]
    assert all(0 <= row["dice"] <= 1 and row["ms_per_image"] > 0 for row in sweep)
    assert "## Sampling steps" in (out / "metrics.md").read_text()
