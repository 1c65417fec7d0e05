"""Bad input gets one line: ``error: ...`` on stderr naming the file/key/value and the fix, exit 2.

The tools run in-process (``segmentation.cli.<tool>.main``), as the launchers and console scripts
call them; ``DERMSEG_DEBUG=1`` turns the line back into a traceback.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import tiny_config as tiny

from segmentation.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from segmentation.cli import export as export_cli
from segmentation.cli import train as train_cli
from segmentation.config import ConfigError, dump_config
from segmentation.data.files import PairedFolder
from segmentation.errors import CheckpointError
from segmentation.training.build import run_training


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("DERMSEG_DEBUG", raising=False)


def one_line(capsys, code: int, *needles: str) -> str:
    """Exit code 2 and exactly one ``error:`` line, the last of stderr, holding every needle."""
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def train(tmp_path: Path, *sets: str, config=None) -> int:
    cfg = tmp_path / "c.yaml"
    dump_config(config or tiny(steps=2), cfg)
    args = ["--cfg", str(cfg), "--out", str(tmp_path / "run")]
    return train_cli.main([*args, *(x for s in sets for x in ("--set", s))])


def test_yaml_that_does_not_parse(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("model:\n  name: unet_tiny\n data: {name: synthetic\n")
    code = train_cli.main(["--cfg", str(cfg), "--out", str(tmp_path / "run")])
    one_line(capsys, code, "broken.yaml' is not valid YAML (", "at line 3, column 2")


def test_malformed_set_value(tmp_path, capsys):
    code = train(tmp_path, "data.preprocess=[clahe")
    one_line(capsys, code, "override 'data.preprocess=[clahe': the value is not valid YAML (")


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "data.image_size = 'abc' has type str, expected int or null"),
        ("-64", "data.image_size = -64 is out of range: it must be at least 1"),
    ],
)
def test_image_size_that_is_not_a_positive_integer(tmp_path, capsys, value, message):
    one_line(capsys, train(tmp_path, f"data.image_size={value}"), message)


def test_image_size_the_network_rejects_fails_before_anything_is_written(tmp_path, capsys):
    code = train(tmp_path, "data.image_size=100")
    one_line(capsys, code, "data.image_size = 100 does not fit network 'unet_tiny'", "104x104")
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_training_set(tmp_path, capsys):
    code = train(tmp_path, "data.n_train=6", "train.batch_size=8")
    one_line(capsys, code, "train.batch_size = 8", "has 6 image(s)", "at most 6")
    assert not (tmp_path / "run").exists()


def paired_folder(root: Path, n: int = 8) -> dict:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((32, 32), np.uint8)
            mask[8:24, 8:24] = 255
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(root / split / "images" / f"img{i:02d}.jpg"), image)
            cv2.imwrite(str(root / split / "masks" / f"img{i:02d}.png"), mask)
    return {"name": "paired_folder", "root": str(root), "image_size": 32}


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_jpeg_names_the_file(tmp_path, capsys, workers):
    data = paired_folder(tmp_path / "data")
    jpeg = tmp_path / "data" / "train" / "images" / "img03.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:40])
    code = train(tmp_path, config=tiny(steps=4, data=data, num_workers=workers))
    one_line(capsys, code, f"image '{jpeg}'", "could not be decoded")


def test_mask_of_the_wrong_size_names_both_files(tmp_path, capsys):
    data = paired_folder(tmp_path / "data")
    mask = tmp_path / "data" / "train" / "masks" / "img05.png"
    cv2.imwrite(str(mask), np.full((16, 16), 255, np.uint8))
    one_line(capsys, train(tmp_path, config=tiny(steps=4, data=data)), f"mask '{mask}' is 16x16")


def test_empty_folder(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "data" / split / "images").mkdir(parents=True)
        (tmp_path / "data" / split / "masks").mkdir(parents=True)
    data = {"name": "paired_folder", "root": str(tmp_path / "data"), "image_size": 32}
    code = train(tmp_path, config=tiny(data=data))
    one_line(capsys, code, "paired_folder found no images in", "train/images")


def test_macos_resource_forks_are_not_samples(tmp_path):
    paired_folder(tmp_path)
    for folder, name in (("images", "._img00.jpg"), ("masks", "._img00.png")):
        (tmp_path / "train" / folder / name).write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    dataset = PairedFolder(root=str(tmp_path), split="train")
    assert len(dataset) == 8 and not any(i.startswith("._") for i in dataset.ids)


def test_non_finite_loss_under_stop(tmp_path, capsys):
    from segmentation.registry import LOSSES

    if "nan_loss" not in LOSSES:
        LOSSES.register("nan_loss", lambda: lambda logits, mask: logits.mean() * float("nan"))
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump({**tiny(steps=2).raw, "loss": {"name": "nan_loss"}}))
    code = train_cli.main(["--cfg", str(cfg), "--out", str(tmp_path / "nan")])
    one_line(capsys, code, "non-finite loss", "at step 1", "train.nonfinite")


def spec_mismatch(tmp_path: Path) -> Path:
    """A checkpoint whose model_spec says depth 2 while its weights are of depth 3."""
    run_training(tiny(steps=2), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    ckpt["model_spec"]["kwargs"]["depth"] = 2
    save_checkpoint(tmp_path / "edited.pt", ckpt)
    return tmp_path / "edited.pt"


def test_checkpoint_whose_spec_does_not_fit_its_weights(tmp_path, capsys):
    path = spec_mismatch(tmp_path)
    with pytest.raises(CheckpointError, match=r"weights do not fit the network UNet \(.*unexp"):
        model_from_checkpoint(load_checkpoint(path), source=str(path))
    code = export_cli.main(["--ckpt", str(path), "--format", "onnx", "--out", str(tmp_path / "m")])
    one_line(capsys, code, "weights do not fit the network UNet")


def test_export_at_an_image_size_the_network_rejects(tmp_path, capsys):
    run_training(tiny(steps=2), tmp_path / "run")
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    out = tmp_path / "m.onnx"
    args = ["--ckpt", ckpt, "--format", "onnx", "--out", str(out), "--image-size", "100"]
    line = one_line(capsys, export_cli.main(args), "image size 100 does not fit 'unet_tiny'")
    assert "divisible by 8" in line and "104x104" in line and not out.exists()


def test_sync_bn_on_cpu_is_refused_at_set_up(tmp_path, monkeypatch):
    from segmentation import distributed

    monkeypatch.setattr(distributed, "init_distributed", lambda: distributed.DistInfo(0, 2, 0))
    with pytest.raises(ConfigError, match="sync_bn: true needs CUDA.*set train.sync_bn: false"):
        run_training(tiny(steps=2, batch_size=2, sync_bn=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_debug_environment_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMSEG_DEBUG", "1")
    with pytest.raises(ConfigError, match="data.image_size = -64"):
        train(tmp_path, "data.image_size=-64")


def test_prepare_data_flags_masks_stored_as_zero_one(tmp_path, capsys):
    from segmentation.cli import prepare_data
    from segmentation.data.synthetic import write_isic2018_layout

    root = write_isic2018_layout(
        tmp_path, n_train=2, n_val=2, n_test=2, size=32, progress=False, force=True
    )
    masks = sorted((root / "ISIC2018_Task1_Training_GroundTruth").glob("*.png"))
    for mask in masks:
        cv2.imwrite(str(mask), (cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 128).astype("uint8"))
    assert prepare_data.main(["--dataset", "isic2018", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "| train | 2 | 2594 |" in out
    assert f"train: 2 mask(s) have a maximum of 1..128 (stored as 0/1?), e.g. {masks[0]}" in out
    assert "--set data.mask_threshold=0" in out and "train: every mask is empty" in out
