"""Corruptions (determinism, severity monotonicity) and adversarial evaluation of a tiny U-Net
trained inside the test; tools/evaluate.py --postprocess / --robustness end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
from segmentation.config import validate
from segmentation.data import collate
from segmentation.data.synthetic import generate_sample
from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segmentation.evaluation.corruptions import CORRUPTIONS, SEVERITIES, CorruptedDataset, corrupt
from segmentation.evaluation.robustness import (
    attack,
    degradation_plot,
    evaluate_adversarial,
    evaluate_corruptions,
    parse_kinds,
    robustness_tables,
)
from segmentation.losses import BCEDiceLoss
from segmentation.training.build import build_dataset, run_training

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def image():
    return generate_sample(0, 0, 128)[0]


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_corruption_is_deterministic_and_monotone(name, image):
    first = [corrupt(image, name, s, seed=0, index=7) for s in SEVERITIES]
    again = [corrupt(image, name, s, seed=0, index=7) for s in SEVERITIES]
    for a, b in zip(first, again, strict=True):
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    change = [np.abs(c.astype(float) - image).mean() for c in first]
    assert all(x < y for x, y in zip(change, change[1:], strict=False)), change
    assert change[0] > 0
    np.testing.assert_array_equal(corrupt(image, name, 0, seed=0, index=7), image)


@pytest.mark.parametrize("name", ["gaussian_noise", "hair", "ruler_ink"])
def test_random_corruptions_depend_on_seed_and_index(name, image):
    base = corrupt(image, name, 3, seed=0, index=7)
    assert not np.array_equal(base, corrupt(image, name, 3, seed=0, index=8))
    assert not np.array_equal(base, corrupt(image, name, 3, seed=1, index=7))


def test_corruption_errors(image):
    with pytest.raises(KeyError, match="Did you mean 'jpeg'"):
        corrupt(image, "jpg", 1, seed=0, index=0)
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, "jpeg", 6, seed=0, index=0)
    with pytest.raises(ValueError, match="choose from corruptions, adversarial"):
        parse_kinds("corruptions,adversarail")


def tiny_config(steps=60):
    return validate(
        {
            "model": {"name": "unet_tiny"},
            "data": {
                "name": "synthetic",
                "image_size": 32,
                "n_train": 64,
                "n_val": 8,
                "n_test": 8,
                "augment": "flips",
            },
            "optim": {"name": "adamw", "lr": 1.0e-2},
            "sched": {"name": "warmup_cosine", "warmup_steps": 5},
            "train": {
                "steps": steps,
                "batch_size": 8,
                "eval_every": steps,
                "checkpoint_every": steps,
                "log_every": steps,
                "image_panel_every": 0,
            },
            "eval": {"batch_size": 8, "boundary": False},
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A unet_tiny trained for 60 steps on 32-px synthetic images (a few seconds on one core)."""
    run = tmp_path_factory.mktemp("run")
    config = tiny_config()
    run_training(config, run)
    ckpt = run / "checkpoints" / "last.pt"
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    return config, model, build_dataset(config, "test", train=False), ckpt


def test_clean_path_of_corrupted_dataset_is_the_dataset(trained):
    _, _, dataset, _ = trained
    clean = CorruptedDataset(dataset, None, image_size=32)
    torch.testing.assert_close(clean[3]["image"], dataset[3]["image"])
    assert clean[3]["id"] == dataset[3]["id"]
    noisy = CorruptedDataset(dataset, "gaussian_noise", 5, image_size=32)
    assert not torch.allclose(noisy[3]["image"], dataset[3]["image"])


def test_attacks_stay_in_the_pixel_ball(trained):
    _, model, dataset, _ = trained
    batch = collate([dataset[i] for i in range(4)])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = batch["image"] * std + mean
    for method in ("noise", "fgsm", "pgd"):
        adv = attack(model, batch, method=method, eps=4 / 255, loss_fn=BCEDiceLoss(), steps=3)
        adv_pixels = adv * std + mean
        assert (adv_pixels - pixels).abs().max() <= 4 / 255 + 1e-5, method
        assert adv_pixels.min() >= -1e-5 and adv_pixels.max() <= 1 + 1e-5
        assert (adv_pixels - pixels).abs().max() > 3.9 / 255, f"{method} did not perturb"
    assert all(p.grad is None for p in model.parameters()), "the attack left parameter gradients"


def test_pgd_lowers_dice_more_than_noise_of_the_same_norm(trained):
    _, model, dataset, _ = trained
    result = evaluate_adversarial(
        model,
        dataset,
        device=CPU,
        eval_config=trained[0].eval,
        loss_fn=BCEDiceLoss(),
        epsilons=(2, 8),
        collate_fn=collate,
    )
    clean, attacks = result["clean_dice"], result["attacks"]
    assert clean > 0.5, f"the tiny U-Net did not learn (clean Dice {clean:.3f})"
    assert attacks["pgd10"]["8/255"] < attacks["noise"]["8/255"] - 0.15, attacks
    assert attacks["pgd10"]["8/255"] < attacks["pgd10"]["2/255"] <= clean + 1e-9, attacks
    assert attacks["fgsm"]["8/255"] < attacks["noise"]["8/255"], attacks
    assert result["attacked_through"] == "forward"


class GenerativeStub(nn.Module):
    """A network with ``compute_loss``/``predict``, like SegDT or the SAM adapters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.calls = 0

    def compute_loss(self, batch, loss_fn):
        self.calls += 1
        return loss_fn(self.conv(batch["image"]), batch["mask"]), {}

    def predict(self, image):
        return self.conv(image)

    def forward(self, x):
        raise AssertionError("networks with compute_loss are attacked through it, not forward")


def test_generative_networks_are_attacked_through_their_training_loss(trained):
    _, _, dataset, _ = trained
    stub = GenerativeStub()
    result = evaluate_adversarial(
        stub,
        dataset,
        device=CPU,
        eval_config=trained[0].eval,
        loss_fn=BCEDiceLoss(),
        epsilons=(4,),
        methods=("fgsm",),
        max_images=4,
        collate_fn=collate,
    )
    assert result["attacked_through"] == "compute_loss" and stub.calls == 1
    assert "training loss" in result["note"]


def test_corruption_evaluation_and_tables(trained, tmp_path):
    config, model, dataset, _ = trained
    result = evaluate_corruptions(
        model,
        dataset,
        device=CPU,
        eval_config=config.eval,
        image_size=32,
        corruptions=["gaussian_noise", "brightness_contrast"],
        severities=(1, 5),
        collate_fn=collate,
    )
    bc = result["corruptions"]["brightness_contrast"]
    assert bc["dice"][1] < bc["dice"][0], bc  # severity 5 hurts more than severity 1
    assert bc["relative"] == pytest.approx(bc["mean"] / result["clean_dice"])
    text = robustness_tables({"corruptions": result})
    assert "| brightness_contrast |" in text and "relative to clean" in text
    degradation_plot({"corruptions": result}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_evaluate_cli_postprocess_and_robustness(trained, tmp_path):
    from segmentation.cli import evaluate

    ckpt = trained[3]
    args = ["--ckpt", str(ckpt), "--out", str(tmp_path), "--no-boundary"]
    args += ["--postprocess", "lcc,fill_holes", "--robustness", "corruptions,adversarial"]
    assert evaluate.main([*args, "--robustness-images", "4"]) == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["postprocessed"]["steps"] == ["lcc", "fill_holes"]
    assert "dice" in saved["postprocessed"]["per_image"] and "dice" in saved["per_image"]
    assert set(saved["robustness"]) == {"corruptions", "adversarial"}
    assert saved["robustness"]["adversarial"]["n_images"] == 4
    assert len(saved["robustness"]["corruptions"]["corruptions"]) == len(CORRUPTIONS.names())
    markdown = (tmp_path / "metrics.md").read_text()
    assert "With post-processing (lcc, fill_holes)" in markdown and "pgd10" in markdown
    assert (tmp_path / "robustness.png").is_file()
    assert evaluate.main([*args[:4], "--postprocess", "lcc,fil_holes"]) == 2
