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
