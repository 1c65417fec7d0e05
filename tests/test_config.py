import dataclasses
import re
import typing
from pathlib import Path

import pytest

from segmentation.config import ConfigError, load_config, validate
from segmentation.training.build import build_dataset, build_model, model_spec

ROOT = Path(__file__).resolve().parents[1]
# experiments/data/ holds data sections for tools/evaluate.py --data (tests/test_evaluate.py)
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").rglob("*.yaml") if p.parent.name != "data")


def base() -> dict:
    return {
        "model": {"name": "unet_tiny"},
        "data": {"name": "synthetic", "image_size": 32, "n_train": 8, "n_val": 4, "n_test": 4},
        "train": {"steps": 2, "batch_size": 2},
    }


def test_experiments_exist():
    assert (ROOT / "experiments" / "unet.yaml") in EXPERIMENTS


@pytest.mark.parametrize(
    "path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "experiments"))
)
def test_every_experiment_loads_and_builds(path):
    config = load_config(path)
    spec = config.section("model")
    spec.setdefault("in_channels", 3)
    spec.setdefault("num_classes", 1)
    name = spec.pop("name")
    model = build_model({"name": name, "kwargs": spec})
    assert sum(p.numel() for p in model.parameters()) > 0
    if config.raw["data"]["name"] == "synthetic":
        dataset = build_dataset(config, "val")
        assert model_spec(config, dataset)["kwargs"]["in_channels"] == dataset.in_channels


def test_misspelled_network_name_suggests():
    raw = base()
    raw["model"]["name"] = "unet_tinyy"
    with pytest.raises(ConfigError, match="(?i)did you mean 'unet_tiny'"):
        validate(raw)


def test_unknown_key_lists_accepted_keys():
    raw = base()
    raw["model"]["base_widht"] = 8
    with pytest.raises(
        ConfigError, match=r"unknown key 'base_widht'.*did you mean 'base_width'.*accepted"
    ):
        validate(raw)
    raw = base()
    raw["train"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"section 'train'.*'stepz'.*did you mean 'steps'"):
        validate(raw)
    raw = base()
    raw["trian"] = {}
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        validate(raw)


def test_string_typed_float_is_an_error_with_hint(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {name: unet_tiny}\ndata: {name: synthetic, image_size: 32}\noptim: {lr: 1e-4}\n"
    )
    with pytest.raises(ConfigError, match=r"optim.lr = '1e-4' is a string.*e.g. 1.0e-4"):
        load_config(cfg)
    assert load_config(cfg, ["optim.lr=1.0e-4"]).raw["optim"]["lr"] == pytest.approx(1e-4)


def test_wrong_type_is_an_error():
    raw = base()
    raw["train"]["steps"] = "many"
    with pytest.raises(ConfigError, match="train.steps = 'many' has type str, expected int"):
        validate(raw)
    raw = base()
    raw["train"]["onednn_linear"] = 1
    with pytest.raises(ConfigError, match="expected bool"):
        validate(raw)


def test_unquoted_on_off_gets_a_quoting_hint_and_the_quoted_word_works(tmp_path):
    cfg = tmp_path / "c.yaml"
    head = "model: {name: unet_tiny}\ndata: {name: synthetic, image_size: 32}\n"
    cfg.write_text(head + "train: {amp: on}\n")
    hint = r"train.amp = True: YAML reads an unquoted on/off.*amp: \"on\""
    with pytest.raises(ConfigError, match=hint):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"--set 'train.amp=\"off\"'"):
        load_config(cfg, ["train.amp=off"])
    assert load_config(cfg, ['train.amp="on"']).raw["train"]["amp"] == "on"
    cfg.write_text(head + 'train: {amp: "on"}\n')
    assert load_config(cfg).raw["train"]["amp"] == "on"


def test_overrides_are_parsed_and_validated(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: unet_tiny}\ndata: {name: synthetic, image_size: 32}\n")
    config = load_config(cfg, ["train.batch_size=3", "model.base_width=4"])
    assert config.train.batch_size == 3 and config.raw["model"]["base_width"] == 4
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(cfg, ["train.batch_size"])
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load_config(cfg, ["train.batchsize=3"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_channels_come_from_the_dataset():
    raw = base()
    raw["model"]["num_classes"] = 2
    config = validate(raw)
    with pytest.raises(ConfigError, match="model.num_classes = 2 but the dataset"):
        model_spec(config, build_dataset(config, "val"))


def test_unknown_loss_dataset_optimizer():
    for section, name, hint in [
        ("loss", "bce_dise", "bce_dice"),
        ("data", "synthetik", "synthetic"),
        ("optim", "adamm", "adam"),
    ]:
        raw = base()
        raw[section] = {**raw.get(section, {}), "name": name}
        with pytest.raises(ConfigError, match=f"(?i)did you mean '{hint}'"):
            validate(raw)


def test_unknown_selection_metric():
    raw = base()
    raw["eval"] = {"metric": "dise"}
    with pytest.raises(ConfigError, match="(?i)eval.metric.*did you mean 'dice'"):
        validate(raw)


# -- every value is checked at load time (type and range) ---------------------------------------


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("eval", "batch_size", 0, "eval.batch_size = 0 is out of range: it must be at least 1"),
        ("train", "keep_checkpoints", -2, "train.keep_checkpoints = -2 is out of range"),
        ("train", "num_workers", -1, "train.num_workers = -1 is out of range"),
        ("train", "grad_clip", -1.0, "train.grad_clip = -1.0 is out of range"),
        ("data", "max_skip_fraction", 1.5, "between 0.0 and 1.0"),
        ("data", "image_size", "abc", "data.image_size = 'abc' has type str, expected int"),
        ("data", "image_size", -64, "data.image_size = -64 is out of range"),
        ("data", "augment", "strong", "data.augment = 'strong'; choose one of default"),
        ("data", "mask_threshold", 300, "data.mask_threshold = 300 is out of range"),
        ("optim", "lr", -0.1, "section 'optim' (adamw): Invalid learning rate: -0.1"),
        ("sched", "factor", 2.0, "section 'sched' (plateau)"),
    ],
)
def test_out_of_range_values_fail_at_load_time(section, key, value, message):
    raw = base()
    if section == "sched":
        raw["sched"] = {"name": "plateau"}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(raw)


def test_every_numeric_setting_declares_its_range():
    from segmentation.config import DataConfig, EvalConfig, TrainConfig

    for cls in (DataConfig, TrainConfig, EvalConfig):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if hints[field.name] in (int, float, int | None, float | None):
                assert field.metadata.get("min") is not None, f"{cls.__name__}.{field.name}"


def test_data_section_is_typed_and_split_from_dataset_arguments():
    config = validate({**base(), "data": {**base()["data"], "on_error": "skip"}})
    assert config.data.name == "synthetic" and config.data.image_size == 32
    assert config.data.on_error == "skip" and config.data.max_skip_fraction == 0.05
    assert config.dataset_kwargs() == {"n_train": 8, "n_val": 4, "n_test": 4}


def test_boundary_metric_switches_boundary_on_in_validation():
    assert not validate(base()).validation_boundary  # off by default (costly on CPU)
    assert validate({**base(), "eval": {"boundary": True}}).validation_boundary
    assert validate({**base(), "eval": {"metric": "hd95"}}).validation_boundary
