"""Losses: hand-computed values, equality with our written-out definitions and with MONAI, finite
gradients, deep-supervision weighting and argument errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from segmentation.losses import BCEDiceLoss, DeepSupervision, FocalLoss, build_loss
from segmentation.registry import LOSSES

SMOOTH = 1e-5

# one image, two pixels: logit 0 on lesion (p = 0.5), logit ln 3 on background (p = 0.75)
TINY_LOGITS = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
TINY_MASK = torch.tensor([1, 0]).view(1, 1, 2)
TINY_BCE = (math.log(2) + math.log(4)) / 2  # -log 0.5, -log 0.25
TINY_DICE = 1 - (2 * 0.5 + SMOOTH) / (0.5 + 0.75 + 1 + SMOOTH)


def test_hand_computed_binary_values():
    assert LOSSES.build("bce")(TINY_LOGITS, TINY_MASK).item() == pytest.approx(TINY_BCE)
    assert LOSSES.build("dice")(TINY_LOGITS, TINY_MASK).item() == pytest.approx(TINY_DICE)
    both = LOSSES.build("bce_dice")(TINY_LOGITS, TINY_MASK)
    assert both.item() == pytest.approx(TINY_BCE + TINY_DICE)
    weighted = LOSSES.build("bce_dice", dice_weight=2.0, bce_weight=0.5)
    assert weighted(TINY_LOGITS, TINY_MASK).item() == pytest.approx(2 * TINY_DICE + 0.5 * TINY_BCE)
    assert weighted.terms["dice"].item() == pytest.approx(TINY_DICE)
    assert weighted.terms["bce"].item() == pytest.approx(TINY_BCE)
    # focal (gamma 2): (1 - pt)^2 * -log pt with pt = 0.5 and 0.25
    focal = [0.25 * math.log(2), 0.5625 * math.log(4)]
    assert LOSSES.build("focal")(TINY_LOGITS, TINY_MASK).item() == pytest.approx(sum(focal) / 2)
    balanced = FocalLoss(gamma=2.0, alpha=0.25)(TINY_LOGITS, TINY_MASK).item()
    assert balanced == pytest.approx((0.25 * focal[0] + 0.75 * focal[1]) / 2)
    assert FocalLoss(gamma=0.0)(TINY_LOGITS, TINY_MASK).item() == pytest.approx(TINY_BCE)
    pos = LOSSES.build("bce", pos_weight=3.0)(TINY_LOGITS, TINY_MASK).item()
    assert pos == pytest.approx((3 * math.log(2) + math.log(4)) / 2)


def test_hand_computed_two_class_values():
    # two channels, one pixel of class 1: softmax (0.25, 0.75)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    mask = torch.ones(1, 1, 1, dtype=torch.long)
    ce = -math.log(0.75)
    dice_bg = 1 - SMOOTH / (0.25 + SMOOTH)  # empty background channel: Dice term ~1
    dice_fg = 1 - (1.5 + SMOOTH) / (1.75 + SMOOTH)
    assert LOSSES.build("bce")(logits, mask).item() == pytest.approx(ce)
    assert LOSSES.build("dice")(logits, mask).item() == pytest.approx((dice_bg + dice_fg) / 2)
    fg_only = LOSSES.build("bce_dice", include_background=False)(logits, mask)
    assert fg_only.item() == pytest.approx(ce + dice_fg)  # CE still over both classes
    # MONAI focal "mean" divides by K: (1 - 0.75)^2 * -log 0.75 / 2
    assert LOSSES.build("focal")(logits, mask).item() == pytest.approx(0.0625 * ce / 2)


def _reference_bce_dice(logits, mask, include_background=True, batch=False):
    """BCE-with-logits (or CE) + soft Dice as dermseg defines them, written out."""
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], mask.float())
        prob, onehot = torch.sigmoid(logits), mask[:, None].float()
    else:
        ce = F.cross_entropy(logits, mask)
        prob = torch.softmax(logits, 1)
        onehot = F.one_hot(mask, logits.shape[1]).permute(0, 3, 1, 2).float()
        if not include_background:
            prob, onehot = prob[:, 1:], onehot[:, 1:]
    dims = (0, 2, 3) if batch else (2, 3)
    inter, total = (prob * onehot).sum(dims), prob.sum(dims) + onehot.sum(dims)
    dice = 1 - (2 * inter + SMOOTH) / (total + SMOOTH)
    return ce + dice.mean()


@pytest.mark.parametrize(
    "channels,include_background,batch", [(1, True, False), (1, True, True), (3, True, False),
                                          (3, False, False), (2, True, True)]
)  # fmt: skip
def test_bce_dice_equals_definition_and_monai(channels, include_background, batch):
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(channels)
    logits = torch.randn(4, channels, 9, 7, generator=g) * 3
    mask = torch.randint(0, max(channels, 2), (4, 9, 7), generator=g)
    mask[0] = 0  # an image without lesion
    loss = BCEDiceLoss(include_background=include_background, batch=batch)
    ours = loss(logits, mask)
    want = _reference_bce_dice(logits, mask, include_background, batch)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
    if channels == 1:
        monai = DiceCELoss(sigmoid=True, batch=batch)(logits, mask[:, None].float())
    else:
        monai = DiceCELoss(
            softmax=True, to_onehot_y=True, include_background=include_background, batch=batch
        )(logits, mask[:, None])
    torch.testing.assert_close(ours, monai, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["bce_dice", "dice", "bce", "focal"])
@pytest.mark.parametrize("channels", [1, 2])
def test_gradients_finite_and_nonzero(name, channels):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, channels, 6, 6, generator=g) * 20).requires_grad_()  # saturated too
    mask = torch.randint(0, 2, (2, 6, 6), generator=g)
    loss = LOSSES.build(name)(logits, mask)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all(), f"{name}: non-finite gradient"
    assert logits.grad.abs().sum() > 0, f"{name}: zero gradient"


def test_deep_supervision_weighting():
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 2, (2, 2, 2), generator=g)
    mask = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (2, 8, 8) of 4x4 blocks
    outputs = [torch.randn(2, 1, s, s, generator=g, requires_grad=True) for s in (8, 4, 2)]
    base = LOSSES.build("bce_dice")
    targets = [mask, coarse.repeat_interleave(2, 1).repeat_interleave(2, 2), coarse]
    want = sum(w * base(o, t) for w, o, t in zip((1.0, 0.5, 0.25), outputs, targets, strict=True))
    ds = LOSSES.build("deep_supervision", base="bce_dice", weights=[1.0, 0.5, 0.25])
    got = ds(outputs, mask)
    torch.testing.assert_close(got, want)
    assert set(ds.terms) == {"level0", "level1", "level2"}
    got.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outputs)
    # a zero weight switches a head off; one tensor gets the plain base loss
    off = DeepSupervision(base="bce_dice", weights=[1.0, 0.0, 0.0])
    torch.testing.assert_close(off(outputs, mask), base(outputs[0], mask))
    torch.testing.assert_close(ds(outputs[0], mask), base(outputs[0], mask))
    # base as a spec (what YAML gives) and as a callable
    spec = DeepSupervision(base={"name": "bce_dice", "dice_weight": 0.0}, weights=[1.0])
    torch.testing.assert_close(spec([outputs[0]], mask), LOSSES.build("bce")(outputs[0], mask))
    fn = DeepSupervision(base=lambda x, m: x.mean() * 0 + m.float().mean(), weights=[2.0, 1.0])
    assert fn(outputs[:2], mask).item() == pytest.approx(3 * mask.float().mean().item())


def test_argument_and_input_errors():
    logits = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="> 128"):
        LOSSES.build("bce_dice")(logits, torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="integer"):
        LOSSES.build("dice")(logits, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"mask\[:, 0\]"):
        LOSSES.build("bce")(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        LOSSES.build("focal")(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="dice_weight"):
        LOSSES.build("bce_dice", dice_weight=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        LOSSES.build("bce_dice", dice_weight=0.0, bce_weight=0)
    with pytest.raises(ValueError, match="alpha"):
        LOSSES.build("focal", alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        LOSSES.build("focal", gamma="2")
    with pytest.raises(ValueError, match="pos_weight"):
        LOSSES.build("bce", pos_weight=2.0)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4).long())
    with pytest.raises(TypeError, match="did you mean 'dice_weight'.*accepted"):
        LOSSES.build("bce_dice", dice_wieght=1.0)
    with pytest.raises(KeyError, match="Did you mean 'bce_dice'"):
        build_loss("bce_dce")
    with pytest.raises(ValueError, match="'name' key"):
        build_loss({"dice_weight": 1.0})
    with pytest.raises(ValueError, match="one weight per output"):
        DeepSupervision(base="bce", weights=[1.0, 0.5])([logits], torch.zeros(1, 4, 4).long())
    with pytest.raises(ValueError, match="non-empty list"):
        DeepSupervision(base="bce", weights=[])
    with pytest.raises(ValueError, match="at least one above 0"):
        DeepSupervision(base="bce", weights=[0.0, 0.0])
