"""nnU-Net-style 2-D U-Net: deep supervision contract, weights, and the data-derived plan."""

import pytest
import torch

import networks
from networks.blocks.deep_supervision import (
    deep_supervision_loss,
    deep_supervision_weights,
    resize_mask,
)
from networks.nnunet2d import NNUNet2D
from segmentation.config import load_config, validate
from segmentation.planning import format_plan, plan_config, plan_experiment, plan_topology


def bce(logits, mask):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask.float())


# -- deep supervision -------------------------------------------------------------------------


def test_weights_are_halved_and_normalised():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(ValueError, match="at least 1"):
        deep_supervision_weights(0)


def test_deep_supervision_loss_hand_computed():
    # a loss that returns the output's width: outputs of width 8, 4, 2 give (8 + 2 + 0.5) / 1.75
    def width(logits, mask):
        assert mask.shape == (1, *logits.shape[-2:])
        return logits.sum() * 0 + logits.shape[-1]

    outputs = [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    loss, logs = deep_supervision_loss(outputs, mask, width)
    assert float(loss) == pytest.approx(6.0)
    assert [float(logs[f"ds_{i}"]) for i in range(3)] == [8.0, 4.0, 2.0]
    # explicit weights, and one tensor = the plain loss
    assert float(deep_supervision_loss(outputs, mask, width, [0, 0, 1])[0]) == 2.0
    assert float(deep_supervision_loss(outputs[0], mask, width)[0]) == 8.0
    with pytest.raises(ValueError, match="3 outputs but 2"):
        deep_supervision_loss(outputs, mask, width, [1.0, 0.5])


def test_targets_are_downsampled_by_nearest_neighbour():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1  # top-left quarter
    assert resize_mask(mask, (2, 2)).tolist() == [[[1, 0], [0, 0]]]
    assert resize_mask(mask, (4, 4)) is mask
    assert resize_mask(mask, (2, 2)).dtype == torch.long


def test_training_returns_auxiliary_logits_evaluation_only_the_main_output():
    torch.manual_seed(0)
    net = NNUNet2D(in_channels=3, num_classes=2, strides=(1, 2, 2, 2, 2), base_width=4)
    x = torch.randn(2, 3, 64, 64)
    outs = net.train()(x)
    # nnU-Net: every decoder level but the lowest (weight 0 there) -> 5 stages, 2 auxiliary heads
    assert [tuple(o.shape) for o in outs] == [(2, 2, 64, 64), (2, 2, 32, 32), (2, 2, 16, 16)]
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 2, 64, 64)
    # compute_loss: the weighted sum of the per-level losses (weights 4/7, 2/7, 1/7)
    mask = (torch.rand(2, 64, 64) > 0.5).long()
    net.train()
    torch.manual_seed(1)
    loss, logs = net.compute_loss({"image": x, "mask": mask}, torch.nn.CrossEntropyLoss())
    levels = [float(logs[f"ds_{i}"]) for i in range(3)]
    expected = (4 * levels[0] + 2 * levels[1] + levels[2]) / 7
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    plain = NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2), deep_supervision=False)
    assert isinstance(plain.train()(torch.randn(1, 3, 8, 8)), torch.Tensor)


def test_trainer_objective_uses_compute_loss():
    from segmentation.losses import BCEDiceLoss
    from segmentation.training.trainer import TrainingObjective

    torch.manual_seed(0)
    net = networks.build_network("nnunet2d_tiny", in_channels=3, num_classes=1).train()
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.zeros(2, 32, 32, dtype=torch.long)}
    loss, logs = TrainingObjective(net, BCEDiceLoss())(batch)
    assert {"loss_dice", "loss_bce", "ds_0", "ds_1"} <= set(logs) and loss.ndim == 0


def test_residual_switch_input_norm_and_errors():
    plain = NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2), base_width=4)
    res = NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2), base_width=4, residual=True)
    assert sum(p.numel() for p in res.parameters()) > sum(p.numel() for p in plain.parameters())
    x = torch.randn(1, 3, 8, 8) * 3 + 5
    stats = dict(input_norm="dataset", input_mean=[5.0] * 3, input_std=[3.0] * 3)
    normed = NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2), base_width=4, **stats)
    normed.unet.load_state_dict(plain.unet.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(normed.eval()(x), plain.eval()((x - 5) / 3))
    with pytest.raises(ValueError, match="divisible by 8 .* 16x16"):
        NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2, 2))(torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="at least 3 stages"):
        NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2))
    with pytest.raises(ValueError, match="one kernel per stage"):
        NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2), kernel_sizes=(3, 3))
    with pytest.raises(ValueError, match="deep_supervision_heads must be in \\[0, 1\\]"):
        NNUNet2D(in_channels=3, num_classes=1, strides=(1, 2, 2), deep_supervision_heads=2)
    with pytest.raises(ValueError, match="exactly when input_norm='dataset'"):
        NNUNet2D(in_channels=3, num_classes=1, input_norm="dataset")


# -- planning ------------------------------------------------------------------------------------

FINGERPRINT = {
    "n_images": 1000,
    "median_shape": [512, 512],
    "min_shape": [512, 512],
    "max_shape": [512, 512],
    "rgb_mean": [0.6, 0.5, 0.4],
    "rgb_std": [0.2, 0.2, 0.2],
    "median_foreground_fraction": 0.2,
}


def test_topology_follows_nnunets_pooling_rule():
    square = plan_topology((128, 128))
    assert square["strides"] == [[1, 1]] + [[2, 2]] * 5 and square["bottleneck"] == [4, 4]
    assert square["kernel_sizes"] == [[3, 3]] * 6 and square["shape"] == [128, 128]
    # a lone remaining axis is pooled only while >= 12 px; the side is padded to the divisor
    wide = plan_topology((20, 100))
    assert wide["strides"] == [[1, 1], [2, 2], [2, 2], [1, 2], [1, 2]]
    assert wide["divisor"] == [4, 16] and wide["shape"] == [20, 112]
    # tiny images still get DynUNet's two poolings
    assert plan_topology((10, 12))["strides"] == [[1, 1], [2, 2], [2, 2]]
    assert plan_topology((10, 12))["shape"] == [12, 12]


def test_memory_rule_gives_nnunets_plan_for_512_px_images():
    plan = plan_experiment(FINGERPRINT, num_classes=2)  # nnU-Net 2-D at 8 GB: 512, 8 stages, 12
    assert (plan["input_size"], plan["stages"], plan["batch_size"]) == (512, 8, 12)
    assert plan_experiment(FINGERPRINT, num_classes=2, memory_gb=4.0)["batch_size"] == 6
    small = plan_experiment(FINGERPRINT, num_classes=2, memory_gb=0.5)  # shrinks until batch 2
    assert small["input_size"] < 512 and small["batch_size"] >= 2
    assert 2 * small["feature_map_elements"] <= small["budget_elements"]
    assert small["input_size"] % 2 ** (small["stages"] - 1) == 0
    few = plan_experiment({**FINGERPRINT, "n_images": 60}, num_classes=2)
    assert few["batch_size"] == 3  # at most 5 % of the training set
    norm = plan["normalization"]
    assert norm["input_norm"] == "dataset"
    assert norm["input_mean"][0] == pytest.approx((0.6 - 0.485) / 0.229, abs=1e-4)
    assert norm["input_std"][2] == pytest.approx(0.2 / 0.225, abs=1e-4)
    assert plan_experiment(FINGERPRINT, num_classes=2, in_channels=5)["normalization"] == {
        "input_norm": "per_image"
    }


def synthetic_config(size, **train):
    return validate(
        {
            "model": {"name": "nnunet2d", "base_width": 8, "max_width": 64},
            "data": {"name": "synthetic", "image_size": size, "n_train": 100, "n_val": 4},
            "train": {"plan": "auto", "plan_memory_gb": 0.02, **train},
        }
    )


def test_plan_changes_with_the_data_image_size():
    plans = {size: plan_config(synthetic_config(size)) for size in (64, 128)}
    (small, p64), (large, p128) = plans[64], plans[128]
    assert (p64["stages"], p128["stages"]) == (5, 6)
    assert p64["batch_size"] == 5 and p128["batch_size"] == 2  # 5 % of 100 / the memory budget
    assert p64["feature_map_elements"] * 4 < p128["feature_map_elements"] * 1.01
    assert len(small.raw["model"]["strides"]) == 5 and len(large.raw["model"]["strides"]) == 6
    assert large.raw["model"]["input_norm"] == "dataset" and large.train.batch_size == 2
    assert p128["applied"]["data.image_size"]["from"] == "experiment"
    assert p128["applied"]["model.strides"]["from"] == "plan"
    # what the experiment states wins, and the plan says so
    kept, plan = plan_config(synthetic_config(128, batch_size=3))
    assert kept.train.batch_size == 3 and plan["applied"]["train.batch_size"]["planned"] == 2
    assert "kept train.batch_size = 3 from the experiment (planned 2)" in format_plan(plan)


def _rescale_images(root, factor):
    import cv2

    for path in root.rglob("*"):
        decoy = "superpixels" in path.name or path.name.startswith("._")
        if path.suffix in (".jpg", ".png", ".bmp") and not decoy:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            size = (image.shape[1] * factor, image.shape[0] * factor)
            cv2.imwrite(str(path), cv2.resize(image, size, interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("name", ["isic2016", "isic2017", "isic2018", "ph2", "ham10000"])
def test_plans_on_the_official_layouts(name, tmp_path, monkeypatch):
    from test_datasets import PH2_IDS, H, W, ham_tree, isic_tree, ph2_tree

    from segmentation.data import isic, splits

    monkeypatch.setattr(splits, "SPLIT_DIR", tmp_path / "splits")
    if name == "ph2":
        ph2_tree(tmp_path, PH2_IDS)
    elif name == "ham10000":
        ham_tree(tmp_path, [1, 2, 3, 1, 1, 2, 1, 4, 1, 1, 2, 1])
    else:
        release = {"isic2016": isic.ISIC2016, "isic2017": isic.ISIC2017}.get(name, isic.ISIC2018)
        isic_tree(tmp_path, release, 4)

    def plan_of_the_tree():
        data = {"name": name, "root": str(tmp_path), "allow_partial": True}
        config = validate({"model": {"name": "nnunet2d"}, "data": data, "train": {"plan": "auto"}})
        return plan_config(config)

    config, plan = plan_of_the_tree()
    assert plan["fingerprint"]["median_shape"] == [H, W]
    # 10x12 images: a 12-px input with two poolings (bottleneck 3 px), the minimum batch
    assert (plan["input_size"], plan["stages"], plan["batch_size"]) == (12, 3, 2)
    assert config.raw["data"]["image_size"] == 12 and len(config.raw["model"]["strides"]) == 3
    _rescale_images(tmp_path, 8)  # the same data at 80x96: side 88 padded to 96, 4 poolings
    config, plan = plan_of_the_tree()
    assert plan["fingerprint"]["median_shape"] == [8 * H, 8 * W]
    assert (plan["input_size"], plan["stages"], plan["bottleneck"]) == (96, 5, [6, 6])


def test_training_prints_and_saves_the_plan_and_uses_deep_supervision(tmp_path, capsys):
    import json

    from segmentation.training.build import run_training

    config = validate(
        {
            "model": {"name": "nnunet2d_tiny"},
            "data": {"name": "synthetic", "image_size": 32, "n_train": 40, "n_val": 4},
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True},
            "sched": {"name": "poly"},
            "train": {"steps": 2, "eval_every": 2, "image_panel_every": 0, "plan": "auto"},
            "eval": {"batch_size": 4, "boundary": False},
        }
    )
    metrics = run_training(config, tmp_path / "run")
    out = capsys.readouterr().out
    assert "plan (nnU-Net 2-D rules) from 40 training images" in out
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.raw["model"]["strides"] == plan["strides"] and saved.train.batch_size == 2
    assert "dice" in metrics["per_image"]


def test_plan_tool_prints_and_writes_json(tmp_path, capsys):
    import json

    from segmentation.cli.plan import main

    sets = ["data.n_train=20", "data.n_val=4", "data.image_size=64"]
    argv = ["--cfg", "experiments/nnunet2d.yaml", "--out", str(tmp_path)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "5 stages" in capsys.readouterr().out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["input_size"] == 64 and saved["config"]["model"]["name"] == "nnunet2d"


def test_nnunet_augmentation_preset_keeps_masks_aligned():
    import numpy as np

    from segmentation.data.transforms import build_transform

    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 200
    mask = (image[..., 0] > 0).astype(np.uint8)
    transform = build_transform(image_size=64, train=True, augment="nnunet", seed=0)
    for seed in range(20):
        transform.set_random_seed(seed)
        x, m = transform(image, mask)
        assert x.shape == (3, 64, 64) and set(m.unique().tolist()) <= {0, 1}
    transform.set_random_seed(3)
    again = transform(image, mask)[0]
    transform.set_random_seed(3)
    assert torch.equal(again, transform(image, mask)[0])
