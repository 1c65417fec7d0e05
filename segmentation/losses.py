"""Segmentation losses ``(logits [B, K, H, W], mask long [B, H, W]) -> scalar`` in ``LOSSES``.

Thin wrappers over MONAI where its semantics are ours; each wrapper picks the flags from the number
of channels, so one YAML ``loss:`` section serves one-channel (sigmoid) and K-class (softmax)
networks.

Our definitions (``p`` = sigmoid or softmax probability, ``g`` = one-hot target, ``s`` =
``smooth``):

* BCE: ``binary_cross_entropy_with_logits`` for ``K == 1``; categorical cross-entropy for
  ``K > 1``; mean over pixels (and images).
* Soft Dice: per image and channel ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)``, averaged over
  images and channels (``batch=True``: sums pooled over the batch first). This is MONAI
  ``DiceLoss`` with ``smooth_nr = smooth_dr = s``.

Where MONAI's semantics differ from ours, and what the wrappers do about it:

* MONAI wants targets ``[B, 1, H, W]`` (float for BCE); dermseg masks are ``long [B, H, W]``: the
  wrappers add the channel and cast, and check that values fit the channel count (MONAI would
  one-hot 255 silently wrong).
* ``DiceCELoss(sigmoid=True)`` vs ``softmax=True, to_onehot_y=True`` must match the channel count,
  and MONAI only warns when softmax meets one channel: the wrappers choose from ``K``.
* ``include_background=False`` drops channel 0 from the Dice term only; MONAI's CE term always
  covers all classes.
* An image with an empty mask gives a Dice term near 1 unless the prediction is all background
  (per-image Dice with a tiny ``smooth``); smp's ``DiceLoss`` instead pools the batch and skips
  absent classes. Use ``batch=True`` for a pooled Dice.
* MONAI ``FocalLoss(reduction="mean")`` averages over ``B * K * H * W`` elements, so for ``K > 1``
  (one-hot targets) the value is the per-pixel focal loss divided by ``K``; a scalar ``alpha``
  weighs the background class by ``1 - alpha`` and every other class by ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from monai.losses import FocalLoss as MonaiFocalLoss
from torch import nn

from networks.blocks.deep_supervision import resize_mask
from segmentation.registry import LOSSES


def _check_weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    return float(value)


def check_inputs(logits: torch.Tensor, mask: torch.Tensor, loss_name: str) -> None:
    """Raise a ``ValueError`` unless ``logits [B, K, H, W]`` and ``mask long [B, H, W]`` fit."""
    if logits.ndim != 4:
        raise ValueError(f"{loss_name}: logits must be [B, K, H, W], got {tuple(logits.shape)}.")
    if tuple(mask.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"{loss_name}: mask must be [B, H, W] = {(logits.shape[0], *logits.shape[2:])} for "
            f"logits {tuple(logits.shape)}, got {tuple(mask.shape)}; drop a channel dimension with "
            "mask[:, 0] or resize the logits to the mask size."
        )
    if mask.is_floating_point() or mask.dtype == torch.bool:
        raise ValueError(
            f"{loss_name}: mask must be an integer (long) label map, got {mask.dtype}."
        )
    num_classes = logits.shape[1]
    low, high = torch.aminmax(mask)
    top = 1 if num_classes == 1 else num_classes - 1
    if int(low) < 0 or int(high) > top:
        raise ValueError(
            f"{loss_name}: mask values must be in [0, {top}] for {num_classes}-channel logits, got "
            f"[{int(low)}, {int(high)}]; binarise masks with > 128 (values 0/255 are not labels)."
        )


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * soft Dice`` through MONAI ``DiceCELoss``.

    One channel: ``DiceCELoss(sigmoid=True)`` (its CE term is ``BCEWithLogits``). ``K > 1``:
    ``DiceCELoss(softmax=True, to_onehot_y=True)`` (its CE term is ``CrossEntropyLoss``).
    After each call ``terms`` holds the detached ``dice`` and ``bce`` terms for logging.

    Args:
        dice_weight: weight of the soft Dice term (MONAI ``lambda_dice``).
        bce_weight: weight of the cross-entropy term (MONAI ``lambda_ce``).
        smooth: added to the Dice numerator and denominator (MONAI ``smooth_nr``, ``smooth_dr``).
        batch: pool the Dice sums over the batch instead of averaging per-image Dice.
        include_background: keep channel 0 in the Dice term when ``K > 1``.
    """

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        smooth: float = 1e-5,
        batch: bool = False,
        include_background: bool = True,
    ) -> None:
        super().__init__()
        self.dice_weight = _check_weight(dice_weight, "dice_weight")
        self.bce_weight = _check_weight(bce_weight, "bce_weight")
        if self.dice_weight == 0 and self.bce_weight == 0:
            raise ValueError("dice_weight and bce_weight are both 0; set at least one above 0.")
        smooth = _check_weight(smooth, "smooth")
        common = dict(smooth_nr=smooth, smooth_dr=smooth, batch=batch)
        common.update(lambda_dice=self.dice_weight, lambda_ce=self.bce_weight)
        self.binary = DiceCELoss(sigmoid=True, **common)
        self.multiclass = DiceCELoss(
            softmax=True, to_onehot_y=True, include_background=include_background, **common
        )
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits [B, K, H, W]`` against ``mask long [B, H, W]`` (scalar)."""
        check_inputs(logits, mask, "bce_dice")
        if logits.shape[1] == 1:
            target = mask[:, None].to(logits.dtype)  # (B, 1, H, W)
            dice, bce = self.binary.dice(logits, target), self.binary.bce(logits, target)
        else:
            target = mask[:, None]  # (B, 1, H, W) labels, one-hot encoded by MONAI
            dice, bce = self.multiclass.dice(logits, target), self.multiclass.ce(logits, target)
        # the same sum as DiceCELoss.forward; computed here to keep the terms for logging
        self.terms = {"dice": dice.detach(), "bce": bce.detach()}
        return self.dice_weight * dice + self.bce_weight * bce


class SoftDiceLoss(nn.Module):
    """Soft Dice loss through MONAI ``DiceLoss`` (sigmoid for one channel, else softmax + one-hot).

    Args:
        smooth: added to numerator and denominator.
        batch: pool the sums over the batch instead of averaging per-image Dice.
        include_background: keep channel 0 when ``K > 1``.
    """

    def __init__(
        self, *, smooth: float = 1e-5, batch: bool = False, include_background: bool = True
    ) -> None:
        super().__init__()
        smooth = _check_weight(smooth, "smooth")
        common = dict(smooth_nr=smooth, smooth_dr=smooth, batch=batch)
        self.binary = DiceLoss(sigmoid=True, **common)
        self.multiclass = DiceLoss(
            softmax=True, to_onehot_y=True, include_background=include_background, **common
        )

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits [B, K, H, W]`` against ``mask long [B, H, W]`` (scalar)."""
        check_inputs(logits, mask, "dice")
        if logits.shape[1] == 1:
            return self.binary(logits, mask[:, None].to(logits.dtype))
        return self.multiclass(logits, mask[:, None])


class BCELoss(nn.Module):
    """Cross-entropy on logits: binary (``K == 1``) or categorical (``K > 1``), mean over pixels.

    Args:
        pos_weight: weight of lesion pixels in the binary case
            (``BCEWithLogitsLoss(pos_weight=...)``); ``None`` for 1. Not accepted for ``K > 1``.
    """

    def __init__(self, *, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = None if pos_weight is None else _check_weight(pos_weight, "pos_weight")

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits [B, K, H, W]`` against ``mask long [B, H, W]`` (scalar)."""
        check_inputs(logits, mask, "bce")
        if logits.shape[1] == 1:
            pos = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
            return F.binary_cross_entropy_with_logits(
                logits[:, 0], mask.to(logits.dtype), pos_weight=pos
            )
        if self.pos_weight is not None:
            raise ValueError(
                f"bce: pos_weight is for one-channel logits, got {logits.shape[1]} channels; "
                "remove pos_weight from the loss section."
            )
        return F.cross_entropy(logits, mask)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., ICCV 2017) through MONAI ``FocalLoss``, mean over all elements.

    Args:
        gamma: focusing exponent (0 gives BCE/CE).
        alpha: class balance in [0, 1]: lesion pixels weigh ``alpha``, background ``1 - alpha``;
            ``None`` for no balancing.
    """

    def __init__(self, *, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        gamma = _check_weight(gamma, "gamma")
        if alpha is not None and not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha!r}.")
        alpha = None if alpha is None else float(alpha)
        self.binary = MonaiFocalLoss(gamma=gamma, alpha=alpha, use_softmax=False)
        self.multiclass = MonaiFocalLoss(
            gamma=gamma, alpha=alpha, use_softmax=True, to_onehot_y=True
        )

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits [B, K, H, W]`` against ``mask long [B, H, W]`` (scalar)."""
        check_inputs(logits, mask, "focal")
        if logits.shape[1] == 1:
            return self.binary(logits, mask[:, None].to(logits.dtype))
        return self.multiclass(logits, mask[:, None])


def build_loss(spec: str | dict | Callable) -> Callable:
    """A loss from a registered name, a ``{name: ..., **kwargs}`` dict, or a callable (as is)."""
    if isinstance(spec, str):
        return LOSSES.build(spec)
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ValueError(
                f"a loss spec needs a 'name' key, got {spec}; e.g. {{name: bce_dice}}."
            )
        kwargs = dict(spec)
        return LOSSES.build(kwargs.pop("name"), **kwargs)
    if callable(spec):
        return spec
    raise ValueError(f"expected a loss name, a {{name: ...}} dict or a callable, got {spec!r}.")


class DeepSupervision(nn.Module):
    """Weighted sum of a base loss over outputs at several resolutions (deep supervision).

    ``outputs[0]`` is the full-resolution head; each lower-resolution output is compared with the
    mask resized by nearest neighbour (``nearest-exact``: pixel centres, like OpenCV
    ``INTER_NEAREST_EXACT``), as nnU-Net does (Isensee et al., Nature Methods 2021).
    Weights are used as given (normalise them yourself for a sum of 1). A single tensor (e.g. the
    evaluation output) gets the plain base loss. Networks that own their deep supervision
    (``compute_loss``, e.g. ``nnunet2d``) use ``networks.blocks.deep_supervision`` instead, which
    derives nnU-Net's weights from the number of outputs.

    Args:
        base: base loss: a registered name (``"bce_dice"``), a spec
            ``{name: bce_dice, dice_weight: 2.0}`` or a callable ``(logits, mask) -> scalar``.
        weights: one non-negative weight per output, full resolution first.
    """

    def __init__(self, *, base: str | dict | Callable, weights: Sequence[float]) -> None:
        super().__init__()
        if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or not weights:
            raise ValueError(f"weights must be a non-empty list of numbers, got {weights!r}.")
        self.weights = [_check_weight(w, "every deep-supervision weight") for w in weights]
        if not any(self.weights) or not all(math.isfinite(w) for w in self.weights):
            raise ValueError(
                f"weights must be finite with at least one above 0, got {list(weights)}."
            )
        self.base = build_loss(base)
        self.terms: dict[str, torch.Tensor] = {}

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """Loss of ``outputs`` (list of ``[B, K, h_i, w_i]`` logits, or one tensor) vs ``mask``."""
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, mask)
        if len(outputs) != len(self.weights):
            raise ValueError(
                f"deep_supervision got {len(outputs)} outputs but {len(self.weights)} weights; "
                "give one weight per output (full resolution first)."
            )
        total, terms = 0.0, {}
        for i, (logits, weight) in enumerate(zip(outputs, self.weights, strict=True)):
            loss = self.base(logits, resize_mask(mask, logits.shape[-2:]))
            terms[f"level{i}"] = loss.detach()
            total = total + weight * loss
        self.terms = terms
        return total


LOSSES.register("bce_dice", BCEDiceLoss)
LOSSES.register("dice", SoftDiceLoss)
LOSSES.register("bce", BCELoss)
LOSSES.register("focal", FocalLoss)
LOSSES.register("deep_supervision", DeepSupervision)

__all__ = [
    "BCEDiceLoss",
    "BCELoss",
    "DeepSupervision",
    "FocalLoss",
    "SoftDiceLoss",
    "build_loss",
    "check_inputs",
]
