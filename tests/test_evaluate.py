"""Evaluation as a library (evaluate_checkpoint, write_evaluation), cross-dataset testing from the
command line, and what an evaluation records or refuses (skipped files, model overrides)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_config as tiny

import networks
from segmentation.checkpoint import save_checkpoint
from segmentation.cli import evaluate
from segmentation.training.build import run_training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> Path:
    """best.pt of unet_tiny trained 40 steps on 32-px synthetic data (validation Dice ~0.5)."""
    run_dir = tmp_path_factory.mktemp("run")
    run_training(tiny(steps=40, eval_every=20, checkpoint_every=20), run_dir)
    return run_dir / "checkpoints" / "best.pt"


def paired_folder(
    root: Path, n: int, *, size: int = 32, first: int = 0, corrupt: tuple[int, ...] = ()
) -> Path:
    """``root/test/{images,masks}/case<i>.png``: synthetic samples ``first ... first + n - 1`` of
    generator seed 0 (masks 0/255); the images listed in ``corrupt`` are truncated PNG files."""
    from segmentation.data.synthetic import generate_sample

    for sub in ("images", "masks"):
        (root / "test" / sub).mkdir(parents=True)
    for i in range(n):
        image, mask, _ = generate_sample(0, first + i, size)
        image_path = root / "test" / "images" / f"case{i}.png"
        if i in corrupt:
            image_path.write_bytes(b"\x89PNG truncated")
        else:
            cv2.imwrite(str(image_path), image[..., ::-1])
        cv2.imwrite(str(root / "test" / "masks" / f"case{i}.png"), mask * 255)
    return root


def fake_checkpoint(path: Path, data: dict) -> Path:
    """An untrained unet_tiny checkpoint whose config reads ``data`` (no training)."""
    torch.manual_seed(0)
    net = networks.build_network("unet_tiny", in_channels=3, num_classes=1)
    spec = {"name": "unet_tiny", "kwargs": {"in_channels": 3, "num_classes": 1}}
    payload = {"model_spec": spec, "model": net.state_dict(), "config": tiny(data=data).raw}
    save_checkpoint(path, {**payload, "step": 0, "best": {}})
    return path


def read(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def same(a, b) -> bool:
    """Equal results, NaN (metrics not computed) included."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_cross_dataset_cli_on_a_paired_folder(best, tmp_path):
    """The checkpoint's own synthetic test images, written as a paired_folder tree, score exactly
    as the synthetic test split does; --data-name/--data-root, --data FILE and the library agree."""
    from segmentation.evaluation.checkpoint_eval import evaluate_checkpoint

    own = evaluate_checkpoint(best, boundary=False, skin_tone=False)["metrics"]
    assert own["data"]["name"] == "synthetic" and own["n_images"] == 4
    assert own["per_image"]["dice"] > 0.3  # a trained model, not an empty prediction
    root = paired_folder(tmp_path / "external", 4, first=1_000_000)  # the synthetic test split
    args = ["--ckpt", str(best), "--split", "test", "--no-boundary"]
    by_name = ["--data-name", "paired_folder", "--data-root", str(root)]
    assert evaluate.main([*args, *by_name, "--out", str(tmp_path / "a")]) == 0
    metrics = read(tmp_path / "a")
    assert same(metrics["per_image"], own["per_image"]) and same(metrics["global"], own["global"])
    assert metrics["n_images"] == 4 and metrics["n_skipped"] == 0
    # the replacement keeps the checkpoint's input size; the synthetic keys are gone
    assert metrics["data"] == {"name": "paired_folder", "root": str(root), "image_size": 32}
    assert (
        (tmp_path / "a" / "metrics.md").read_text().startswith("# unet_tiny on paired_folder test")
    )
    with open(tmp_path / "a" / "per_image.csv") as f:
        ids = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert ids == [f"case{i}" for i in range(4)]

    data_file = tmp_path / "external.yaml"
    data_file.write_text(f"data:\n  name: paired_folder\n  root: {root}\n")
    assert evaluate.main([*args, "--data", str(data_file), "--out", str(tmp_path / "b")]) == 0
    assert same(read(tmp_path / "b")["per_image"], own["per_image"])
    result = evaluate_checkpoint(best, data=data_file, boundary=False, skin_tone=False)
    assert same(result["metrics"]["per_image"], own["per_image"]) and len(result["rows"]) == 4


def test_set_data_name_points_to_the_section_replacement(best, tmp_path, capsys):
    root = paired_folder(tmp_path / "external", 2)
    argv = ["--ckpt", str(best), "--out", str(tmp_path / "out"), "--no-boundary"]
    argv += ["--set", "data.name=paired_folder", "--set", f"data.root={root}"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown key 'n_train'" in err and "--data-name NAME --data-root DIR" in err
    assert len(err.strip().splitlines()) == 1
    assert evaluate.main([*argv[:4], "--data-root", str(root)]) == 2
    assert "--data-root needs --data-name" in capsys.readouterr().err
    ph2 = str(ROOT / "experiments" / "data" / "ph2.yaml")  # root: null in the shipped file
    assert evaluate.main([*argv[:4], "--data", ph2]) == 2
    assert "data.root is not set" in capsys.readouterr().err


def test_model_overrides_are_refused(best, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--ckpt", str(best), "--out", str(out), "--no-boundary", "--set", "model.name=unet"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert "override 'model.name=unet'" in err and "cannot change" in err
    assert not out.exists()  # refused before anything is written
    assert evaluate.main([*argv[:-1], "optim.lr=0.1"]) == 2


def test_skipped_test_images_are_recorded(tmp_path):
    root = paired_folder(tmp_path / "data", 4, corrupt=(2,))
    ckpt = fake_checkpoint(tmp_path / "c.pt", {"name": "paired_folder", "root": str(root)})
    out = tmp_path / "out"
    argv = ["--ckpt", str(ckpt), "--out", str(out), "--no-boundary", "--report", str(out / "r")]
    argv += ["--set", "data.on_error=skip", "--set", "data.max_skip_fraction=0.5"]
    with pytest.warns(UserWarning, match="case2"):
        assert evaluate.main(argv) == 0
    metrics = read(out)
    assert metrics["n_images"] == 3 and metrics["n_skipped"] == 1
    assert [s["id"] for s in metrics["skipped_files"]] == ["case2"]
    assert "case2.png" in metrics["skipped_files"][0]["image"]
    line = "Scored on 3 of 4 images; skipped: case2 ("
    assert line in (out / "metrics.md").read_text()
    assert line in (out / "r" / "report.md").read_text()

    from segmentation.cli import model_card

    card = tmp_path / "CARD.md"
    assert model_card.main(["--ckpt", str(ckpt), "--eval", str(out), "--out", str(card)]) == 0
    assert line in card.read_text()


def test_replacement_keeps_the_input_pipeline_unless_set():
    from segmentation.evaluation.checkpoint_eval import evaluation_config

    raw = tiny().raw
    raw["data"]["preprocess"] = ["shades_of_gray"]
    ckpt = {"config": raw}
    data = evaluation_config(ckpt, data={"name": "synthetic", "n_test": 3}).raw["data"]
    assert data == {
        "name": "synthetic",
        "n_test": 3,
        "image_size": 32,
        "preprocess": ["shades_of_gray"],
    }
    data = evaluation_config(ckpt, data={"name": "synthetic", "image_size": 48}).raw["data"]
    assert data["image_size"] == 48 and data["preprocess"] == ["shades_of_gray"]
    # overrides apply after the replacement
    config = evaluation_config(ckpt, data={"name": "synthetic"}, overrides=["data.n_test=2"])
    assert config.raw["data"]["n_test"] == 2
    assert raw["data"]["n_test"] == 4  # the checkpoint's config is not modified


def test_bad_data_files_name_the_file(tmp_path):
    from segmentation.errors import ConfigError
    from segmentation.evaluation.checkpoint_eval import read_data_section

    bare = tmp_path / "bare.yaml"
    bare.write_text("name: ph2\nroot: /data/ph2\n")
    with pytest.raises(ConfigError, match=r"bare.yaml' must hold one top-level 'data:'"):
        read_data_section(bare)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml' is not valid YAML"):
        read_data_section(broken)
    with pytest.raises(FileNotFoundError, match="experiments/data/"):
        read_data_section(tmp_path / "none.yaml")


def test_every_dataset_ships_a_data_file():
    import segmentation.data  # noqa: F401  (registers the datasets)
    from segmentation.evaluation.checkpoint_eval import evaluation_config, read_data_section
    from segmentation.registry import DATASETS

    folder = ROOT / "experiments" / "data"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(DATASETS.names())
    for name in DATASETS.names():
        section = read_data_section(folder / f"{name}.yaml")
        assert section["name"] == name
        config = evaluation_config({"config": tiny().raw}, data=section)  # keys validated
        assert config.raw["data"]["image_size"] == 32


def test_write_evaluation_round_trip(best, tmp_path):
    from segmentation.evaluation.checkpoint_eval import evaluate_checkpoint
    from segmentation.evaluation.results import read_evaluation, write_evaluation
    from segmentation.reporting.tables import group_reports

    result = evaluate_checkpoint(
        best, split="val", boundary=False, groups=["ita", "tags"], n_boot=20, command="x"
    )
    text = write_evaluation(result, tmp_path)
    metrics, rows = read_evaluation(tmp_path)
    assert same(metrics["per_image"], result["metrics"]["per_image"]) and len(rows) == 4
    assert metrics["command"] == "x" and metrics["split"] == "val" and metrics["n_images"] == 4
    assert [r["group_key"] for r in group_reports(metrics)] == [
        "ita_group",
        "ita_chardon6",
        "ita_kinyanjui8",
        "tags",
    ]
    assert "## Dice by true ITA group" in text and text == (tmp_path / "metrics.md").read_text()


def test_group_reports_take_one_shape():
    from segmentation.evaluation.groups import group_report
    from segmentation.reporting.tables import group_reports

    rows = [{"dice": d, "tone": t} for d, t in [(0.9, "light"), (0.5, "dark"), (0.7, "dark")]]
    report = group_report(rows, "tone", n_boot=10)
    assert group_reports({"groups": {"tone": report}}) == [report]
    assert group_reports({}) == [] and group_reports({"groups": {}}) == []
    for other in (report, [report]):  # a bare report, a list: refused, not guessed
        with pytest.raises(ValueError, match="must map each group column"):
            group_reports({"groups": other})


def test_format_number_and_markers():
    from segmentation.reporting.tables import format_number, replace_between_markers

    assert format_number(0.123456) == "0.1235" and format_number(2.5, ".1f") == "2.5"
    assert format_number(float("nan")) == "n/a" and format_number(None, missing="-") == "-"
    assert format_number(12) == "12" and format_number(True) == "True"
    assert format_number(np.float32(0.5), ".2f") == "0.50" and format_number("x") == "x"

    start, end = "<!-- t:start -->", "<!-- t:end -->"
    text = f"head\n{start}\nold\n{end}\ntail\n"
    new = replace_between_markers(text, start, end, "new")
    assert new == f"head\n{start}\nnew\n{end}\ntail\n"
    assert replace_between_markers(new, start, end, "new") == new
    for bad in ("no markers", f"{start}\n{start}\n{end}", f"{end}\n{start}"):
        with pytest.raises(ValueError, match="expected the markers .* in that order"):
            replace_between_markers(bad, start, end, "x")
