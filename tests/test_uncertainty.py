"""Uncertainty AUROC: hand-computed cases, ties, parity with MONAI, the meter on masks."""

import math
import sys
from pathlib import Path

import pytest
import torch
from monai.metrics import compute_roc_auc
from torch import nn

import networks
from segmentation.checkpoint import save_checkpoint
from segmentation.config import EvalConfig
from segmentation.errors import ConfigError
from segmentation.evaluation.checkpoint_eval import evaluate_checkpoint
from segmentation.evaluation.results import evaluation_markdown
from segmentation.evaluation.uncertainty import UncertaintyMeter, auroc, evaluate_uncertainty

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_config  # noqa: E402


def test_auroc_hand_computed():
    # 2 positives x 2 negatives: (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3/4
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    # one tie between a positive and a negative counts 1/2: pairs (>, =, >, >) -> 3.5/4
    assert auroc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.875
    assert auroc(torch.full((6,), 0.3), torch.tensor([0, 1, 0, 1, 1, 0])) == 0.5
    assert auroc(torch.tensor([0.0, 0.1, 0.9]), torch.tensor([0, 0, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.1, 0.0]), torch.tensor([0, 0, 1])) == 0.0
    assert math.isnan(auroc(torch.rand(5), torch.zeros(5)))
    with pytest.raises(ValueError, match="one label per score"):
        auroc(torch.rand(5), torch.zeros(4))


def test_auroc_matches_monai_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (3000,), generator=gen).float() / 20  # many ties
    labels = torch.rand(3000, generator=gen) < 0.3 + 0.4 * scores
    expected = compute_roc_auc(scores, labels.long())
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_meter_hand_made_masks():
    # one 4x4 image: ground truth left half; prediction wrong on two pixels of column 2
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[:, :, :2] = 1
    probs = mask.unsqueeze(1).float() * 0.9 + 0.05
    probs[0, 0, 0:2, 2] = 0.8  # false positives
    variance = torch.full_like(probs, 0.01)
    variance[0, 0, 0, 2] = 0.2  # one wrong pixel is the most uncertain,
    variance[0, 0, 1, 2] = 0.01  # the other ties with the 14 right pixels
    meter = UncertaintyMeter()
    meter.update(probs, variance, mask)
    out = meter.compute()
    # wrong pixel 1 beats 14 right pixels, wrong pixel 2 ties 14: (14 + 7) / (2 * 14)
    assert out["auroc_wrong_pixels"] == pytest.approx(0.75)
    assert (out["n_pixels"], out["n_wrong"]) == (16, 2)
    assert out["mean_uncertainty_wrong"] == pytest.approx(0.105)
    assert out["mean_uncertainty_right"] == pytest.approx(0.01)
    assert out["dice_of_mean"] == pytest.approx(2 * 8 / (10 + 8))
    # merging a second meter's state pools the pixels (an image that is right everywhere)
    other = UncertaintyMeter()
    other.update(torch.full_like(probs, 0.1), torch.zeros_like(variance), torch.zeros_like(mask))
    merged = UncertaintyMeter().merge(meter.state(), other.state()).compute()
    assert merged["n_pixels"] == 32 and merged["dice_of_mean"] == pytest.approx((16 / 18 + 1) / 2)
    assert merged["auroc_wrong_pixels"] == pytest.approx((14 + 7 + 2 * 16) / (2 * 30))


def test_meter_errors():
    meter = UncertaintyMeter()
    with pytest.raises(RuntimeError, match="before any update"):
        meter.compute()
    with pytest.raises(ValueError, match="one size"):
        meter.update(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.zeros(1, 5, 5))


class ChannelSampler(nn.Module):
    """A stand-in sampling network: channel 0 of the image is the mean logit, channel 1 the
    variance, so the expected AUROC is known."""

    def predict_with_uncertainty(self, image, n_samples=8):
        return image[:, :1], image[:, 1:2]


def test_evaluate_uncertainty_runs_the_sampler_over_the_split():
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[:2] = 1  # top half lesion
    logit = torch.where(mask > 0, 5.0, -5.0)
    logit[0, 0], logit[3, 3] = -5.0, 5.0  # two wrong pixels: a missed lesion pixel, a false one
    variance = torch.full((4, 4), 0.01)
    variance[0, 0] = 0.2  # the first wrong pixel is the most uncertain, the second is not
    variance[3, 3] = 0.0
    image = torch.stack([logit, variance, torch.zeros(4, 4)])
    dataset = [{"image": image, "mask": mask}, {"image": image, "mask": mask}]

    def collate(items):
        return {k: torch.stack([item[k] for item in items]) for k in ("image", "mask")}

    out = evaluate_uncertainty(
        ChannelSampler(),
        dataset,
        n_samples=4,
        device=torch.device("cpu"),
        eval_config=EvalConfig(batch_size=1),
        collate_fn=collate,
    )
    # per image: wrong pixel 1 beats the 14 right ones, wrong pixel 2 loses to them
    assert out["auroc_wrong_pixels"] == pytest.approx(0.5)
    assert (out["n_samples"], out["n_pixels"], out["n_wrong"]) == (4, 32, 4)
    with pytest.raises(ValueError, match="predict_with_uncertainty"):
        evaluate_uncertainty(nn.Identity(), dataset, device="cpu", eval_config=EvalConfig())


def test_evaluate_checkpoint_reports_segdt_uncertainty(tmp_path):
    torch.manual_seed(0)
    net = networks.build_network("segdt_learned_tiny", in_channels=3, num_classes=1)
    raw = tiny_config().raw
    raw["model"] = {"name": "segdt_learned_tiny"}
    spec = {"name": "segdt_learned_tiny", "kwargs": {"in_channels": 3, "num_classes": 1}}
    path = tmp_path / "segdt.pt"
    save_checkpoint(
        path, {"model_spec": spec, "model": net.state_dict(), "config": raw, "step": 0, "best": {}}
    )
    common = dict(split="test", boundary=False, skin_tone=False, device="cpu")
    metrics = evaluate_checkpoint(path, uncertainty_samples=3, **common)["metrics"]
    report = metrics["uncertainty"]
    assert report["n_samples"] == 3 and report["n_pixels"] == 4 * 32 * 32
    assert 0.0 <= report["auroc_wrong_pixels"] <= 1.0
    assert "## Uncertainty (3 samples)" in evaluation_markdown(metrics)
    assert (
        "uncertainty" not in evaluate_checkpoint(path, uncertainty_samples=0, **common)["metrics"]
    )
    with pytest.raises(ConfigError, match="at least 2 samples"):
        evaluate_checkpoint(path, uncertainty_samples=1, **common)
