"""The CI benchmark suite: check logic on doctored results, README markers, the CI configs, one row.

The real suite (30 minutes) never runs here: the check is exercised on fake results and through the
CLI with ``run_suite`` replaced; ``run_row`` runs once on a 2-step ``unet_tiny`` config. The main
(three-seed) suite is tested in ``tests/test_benchmark_main.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from segmentation.benchmark import row as benchmark_row
from segmentation.benchmark import suite as benchmark_suite
from segmentation.benchmark.readme import README_END, README_START, render_markdown, write_readme
from segmentation.benchmark.suite import QUALITY, TOLERANCES, check, suite_configs
from segmentation.config import load_config, validate

ROOT = Path(__file__).resolve().parents[1]
CI_NAMES = list(suite_configs("ci"))


def fake_row(name: str, dice: float = 0.8) -> dict:
    row = {
        "name": name,
        "label": name,
        "params": 1_234_567,
        "gmac_128": 0.5,
        "gmac_224": 1.53,
        "dice": dice,
        "iou": dice - 0.1,
        "thresholded_jaccard": dice - 0.2,
        "hd95": 7.5,
        "hd95_excluded": 2,
        "global_dice": dice + 0.05,
        "worst_group": "dark",
        "worst_group_dice": dice - 0.1,
        "group_gap": 0.1,
        "train_images_s": 20.0,
        "infer_images_s": 80.0,
        "wall_s": 120.0,
    }
    for tag in benchmark_row.HARD_TAGS:
        row[f"dice_{tag}"], row[f"n_{tag}"] = dice - 0.15, 30
    return row


def fake_result(names=CI_NAMES) -> dict:
    proto = {
        "suite": "ci",
        "steps": 300,
        "batch_size": 8,
        "image_size": 128,
        "n_test": 300,
        "seed": 0,
        "data": {"name": "synthetic", "seed": 0, "n_val": 64},
        "threads": 2,
        "deterministic": True,
        "torch": torch.__version__,
        "cpu": "test cpu",
        "tolerances": dict(TOLERANCES),
        "wall_s": 1800.0,
    }
    return {"protocol": proto, "rows": {n: fake_row(n) for n in names}}


def test_check_passes_on_identical_and_within_tolerance_results():
    reference = fake_result()
    current = copy.deepcopy(reference)
    for metric in QUALITY:
        current["rows"]["unet"][metric] += 0.9 * TOLERANCES[metric]
    current["rows"]["unet"]["train_images_s"] = 1.0  # timings never fail the check
    failures, report = check(reference, current, CI_NAMES)
    assert failures == []
    assert any("unet: train_images_s 1.0" in line and "not checked" in line for line in report)


@pytest.mark.parametrize("metric", ["dice", "worst_group_dice", "dice_tiny", "hd95"])
def test_check_fails_when_a_quality_metric_moves_beyond_tolerance(metric):
    reference = fake_result()
    current = copy.deepcopy(reference)
    current["rows"]["swin_unet"][metric] -= 1.5 * TOLERANCES[metric]
    failures, _ = check(reference, current, CI_NAMES)
    assert len(failures) == 1
    assert failures[0].startswith(f"swin_unet: {metric} ") and "tolerance" in failures[0]


def test_check_uses_the_tolerances_stored_in_the_reference():
    reference = fake_result()
    reference["protocol"]["tolerances"]["dice"] = 0.001
    current = copy.deepcopy(reference)
    current["rows"]["unet"]["dice"] += 0.005  # within the default 0.02, beyond the stored 0.001
    failures, _ = check(reference, current, CI_NAMES)
    assert failures and "tolerance +-0.001" in failures[0]


def test_check_fails_on_missing_or_unregistered_rows_and_nan_changes():
    reference = fake_result()
    current = copy.deepcopy(reference)
    del reference["rows"]["segdt"]  # registered but absent from the reference
    reference["rows"]["old_net"] = fake_row("old_net")  # in the reference without a config
    current["rows"]["unet"]["hd95"] = math.nan  # a metric that stops being computable
    failures, _ = check(reference, current, CI_NAMES)
    text = "\n".join(failures)
    assert "segdt: registered for CI" in text
    assert "old_net: in the reference but no experiments/ci/old_net.yaml" in text
    assert "unet: hd95 nan" in text


def test_check_fails_when_the_protocol_differs():
    reference = fake_result()
    current = copy.deepcopy(reference)
    current["protocol"]["steps"] = 2
    failures, _ = check(reference, current, CI_NAMES)
    assert failures == [
        "protocol: steps = 2 in this run but 300 in the reference; compare runs with the same "
        "settings (drop --steps)."
    ]


def _load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", ROOT / "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool_and_reference(tmp_path):
    """The CLI module, a fake committed ``ci.json`` and its path."""
    reference = fake_result()
    path = tmp_path / "ci.json"
    path.write_text(json.dumps(reference))
    return _load_tool(), reference, path


def test_cli_check_exit_code_follows_the_comparison(tmp_path, monkeypatch, capsys):
    tool, reference, path = _tool_and_reference(tmp_path)
    rerun = copy.deepcopy(reference)
    monkeypatch.setattr(benchmark_suite, "run_suite", lambda *a, **k: copy.deepcopy(rerun))
    assert tool.main(["--suite", "ci", "--check", str(path)]) == []
    assert "passed" in capsys.readouterr().out
    rerun["rows"]["mcanet"]["dice"] -= 0.05  # a network change that moves Dice
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--suite", "ci", "--check", str(path)])
    assert exit_info.value.code == 1
    assert "CHECK FAILED: mcanet: dice 0.7500 vs reference 0.8000" in capsys.readouterr().out


def test_cli_only_replaces_its_rows_of_an_existing_json(tmp_path, monkeypatch, capsys):
    tool, reference, path = _tool_and_reference(tmp_path)
    partial = copy.deepcopy(reference)
    partial["rows"] = {"segdt": {**reference["rows"]["segdt"], "dice": 0.5, "wall_s": 100.0}}
    monkeypatch.setattr(benchmark_suite, "run_suite", lambda *a, **k: copy.deepcopy(partial))
    tool.main(["--suite", "ci", "--only", "segdt", "--json", str(path)])
    merged = json.loads(path.read_text())
    assert merged["rows"]["segdt"]["dice"] == 0.5
    others = {n: r for n, r in reference["rows"].items() if n != "segdt"}
    assert {n: merged["rows"][n] for n in others} == others
    assert list(merged["rows"]) == list(reference["rows"])  # the table keeps its order
    total = 100.0 + sum(r["wall_s"] for r in others.values())
    assert merged["protocol"]["wall_s"] == pytest.approx(total)
    partial["protocol"]["steps"] = 2  # a smoke run must not overwrite real rows
    before = path.read_text()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--suite", "ci", "--only", "segdt", "--json", str(path)])
    assert exit_info.value.code == 2 and path.read_text() == before
    assert "its steps is 300 but this run's is 2" in capsys.readouterr().err


def test_readme_write_is_idempotent_and_touches_only_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# title\n\n## Benchmark\nintro\n\n", "\n\n## Next\ntext\n"
    readme.write_text(f"{before}{README_START}\nold table\n{README_END}{after}")
    result = fake_result()
    result["rows"]["sam_adapter"]["label"] = "sam_adapter (oracle prompt)"
    assert write_readme(readme, result) is True
    text = readme.read_text()
    assert text.startswith(before + README_START) and text.endswith(README_END + after)
    assert "old table" not in text and "| `unet` | 1.23 | 0.50 | 1.53 | 0.8000 |" in text
    assert "`sam_adapter` **oracle prompt**" in text
    assert write_readme(readme, result) is False
    assert readme.read_text() == text
    assert render_markdown(result) in text


def test_readme_without_markers_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="expected the markers"):
        write_readme(readme, fake_result())


def test_every_ci_config_loads_builds_and_shares_the_protocol():
    from segmentation.training.build import build_dataset, build_model, model_spec

    configs = {name: load_config(path) for name, path in suite_configs("ci").items()}
    proto = benchmark_suite.protocol(configs, threads=2, suite="ci")  # raises on disagreement
    assert proto["batch_size"] == 8 and proto["image_size"] == 128 and proto["n_test"] >= 300
    for name, config in configs.items():
        assert config.train.eval_every == config.train.steps, name
        assert config.train.deterministic and not config.eval.boundary, name
        model = build_model(model_spec(config, build_dataset(config, "train")))
        assert sum(p.numel() for p in model.parameters()) > 0, name
    ablation = [configs[f"att_swinunet_{m}"].raw for m in ("none", "cross", "cross_spatial")]
    for raw in ablation:
        assert {k: v for k, v in raw["model"].items() if k != "skip_attention"} == {
            k: v for k, v in ablation[0]["model"].items() if k != "skip_attention"
        }
        assert {k: v for k, v in raw.items() if k != "model"} == {
            k: v for k, v in ablation[0].items() if k != "model"
        }


def test_only_rejects_unknown_rows():
    with pytest.raises(KeyError, match="no experiments/ci/unet_typo.yaml"):
        suite_configs("ci", ["unet_typo"])


def test_gmac_of_a_convolutional_network_scales_with_the_pixel_count():
    spec = {"name": "unet_tiny", "kwargs": {"in_channels": 3, "num_classes": 1}}
    g64, g128 = benchmark_row.count_gmac(spec, 64), benchmark_row.count_gmac(spec, 128)
    assert g64 > 0 and g128 == pytest.approx(4 * g64, rel=1e-9)


def test_run_row_trains_tests_and_records_every_column(tmp_path):
    raw = {
        "model": {"name": "unet_tiny"},
        "data": {"name": "synthetic", "image_size": 32, "n_train": 16, "n_val": 4, "n_test": 12},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
        "eval": {"boundary": False, "batch_size": 8},
    }
    raw["train"].update(device="cpu", deterministic=True, image_panel_every=0)
    config = validate(raw)
    try:
        row = benchmark_row.run_row("tiny", config, tmp_path / "tiny", log=lambda *_: None)
    finally:  # train.deterministic is process-wide; leave the default for the other tests
        torch.use_deterministic_algorithms(False)
    assert row["n_test"] == 12 and row["step"] == 2
    assert (tmp_path / "tiny/checkpoints/best.pt").is_file()
    for key in (*QUALITY, "gmac_128", "gmac_224", "params", "train_images_s", "infer_images_s"):
        assert key in row, key
    assert sum(g["n"] for g in row["groups"].values()) == 12
    assert row["hd95_excluded"] >= 0 and row["label"] == "tiny"
