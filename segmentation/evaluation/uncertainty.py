"""Per-pixel uncertainty of sampling networks, scored by how well it flags wrong pixels (AUROC).

A sampling network (SegDT) draws ``N`` masks per image; its per-pixel uncertainty is the variance
of the ``N`` samples' probabilities (``predict_with_uncertainty``; the predictors of
:mod:`segmentation.inference.predictors` carry it through flip TTA and sliding windows). An
uncertainty map is useful when it is high where the prediction is wrong. Definitions:

* Prediction: the mean of the ``N`` samples (their mean logits for SegDT), binarised like every
  prediction (``sigmoid > 0.5``; ``argmax`` for several classes). A pixel is *wrong* when that
  label differs from the ground truth.
* Score: the variance of the samples' probability (one channel), or the sum of the per-class
  variances (several channels).
* AUROC of the score as a detector of wrong pixels, pooled over every pixel of the split: the
  probability that a random wrong pixel is more uncertain than a random right one, ties counting
  one half (Mann-Whitney U with mid-ranks; Hanley and McNeil, Radiology 1982). 0.5 is an
  uninformative map (a constant map scores exactly 0.5), 1.0 ranks every wrong pixel above every
  right one. NaN when the split has no wrong pixel, or no right one.

Also reported: the per-image mean Dice of that ``N``-sample prediction (it differs from the
headline single-sample Dice), the pixel counts, and the mean score of wrong and right pixels.
:class:`UncertaintyMeter` accumulates per batch (``update -> compute -> reset``, like
:class:`~segmentation.evaluation.metrics.SegmentationMetrics`); its ``state``/``merge`` let DDP
ranks combine exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["UncertaintyMeter", "auroc", "evaluate_uncertainty"]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the positives ``labels``, exact, ties = 1/2.

    Args:
        scores: any shape, higher means "more likely positive".
        labels: boolean (or 0/1) of the same shape.

    Returns:
        ``U / (n_pos * n_neg)`` with ``U`` the Mann-Whitney statistic from mid-ranks; NaN when
        either class is empty.
    """
    scores, labels = scores.flatten().double(), labels.flatten().bool()
    if scores.shape != labels.shape:
        raise ValueError(
            f"auroc needs one label per score; got {scores.numel()} scores and "
            f"{labels.numel()} labels."
        )
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    sorted_scores, order = scores.sort()
    _, group, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    mid_ranks = (ends - (counts.double() - 1) / 2)[group]  # 1-based rank, ties share the middle
    rank_sum = mid_ranks[labels[order]].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class UncertaintyMeter:
    """Accumulates uncertainty scores and wrong-pixel labels; see the module docstring.

    ``update(probs, variance, mask)`` with ``probs``/``variance`` ``[B, K, H, W]`` (the samples'
    mean probability and the per-pixel variance) and ``mask`` ``long [B, H, W]``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.wrong: list[torch.Tensor] = []
        self.dice: list[torch.Tensor] = []

    def update(self, probs: torch.Tensor, variance: torch.Tensor, mask: torch.Tensor) -> None:
        if probs.shape != variance.shape or probs.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                "UncertaintyMeter.update needs probabilities and variance [B, K, H, W] and a mask "
                f"[B, H, W] of one size; got {tuple(probs.shape)}, {tuple(variance.shape)} and "
                f"{tuple(mask.shape)}."
            )
        probs, variance, mask = probs.detach().cpu(), variance.detach().cpu(), mask.cpu()
        if probs.shape[1] == 1:
            pred, truth = probs[:, 0] > 0.5, mask > 0
        else:
            pred, truth = probs.argmax(dim=1), mask.long()
        wrong = pred != truth  # (B, H, W)
        self.scores.append(variance.float().sum(dim=1).flatten())
        self.wrong.append(wrong.flatten())
        if probs.shape[1] == 1:  # per-image Dice of the N-sample prediction (empty/empty = 1)
            tp = (pred & truth).flatten(1).sum(1).double()
            den = (pred.flatten(1).sum(1) + truth.flatten(1).sum(1)).double()
            self.dice.append(torch.where(den > 0, 2 * tp / den.clamp(min=1), 1.0))

    def state(self) -> dict[str, Any]:
        return {"scores": self.scores, "wrong": self.wrong, "dice": self.dice}

    def merge(self, *states: dict[str, Any]) -> UncertaintyMeter:
        """Append other meters' :meth:`state` (e.g. gathered from DDP ranks, in rank order)."""
        for state in states:
            self.scores += list(state["scores"])
            self.wrong += list(state["wrong"])
            self.dice += list(state["dice"])
        return self

    def compute(self) -> dict[str, Any]:
        """``auroc``, ``n_pixels``, ``n_wrong``, mean score of wrong/right pixels, N-sample Dice."""
        if not self.scores:
            raise RuntimeError(
                "UncertaintyMeter.compute before any update; evaluate at least one batch first."
            )
        scores, wrong = torch.cat(self.scores), torch.cat(self.wrong)
        n_wrong = int(wrong.sum())

        def mean(values: torch.Tensor) -> float:
            return float(values.double().mean()) if values.numel() else math.nan

        return {
            "auroc_wrong_pixels": auroc(scores, wrong),
            "n_pixels": int(wrong.numel()),
            "n_wrong": n_wrong,
            "mean_uncertainty_wrong": mean(scores[wrong]),
            "mean_uncertainty_right": mean(scores[~wrong]),
            "dice_of_mean": mean(torch.cat(self.dice)) if self.dice else math.nan,
        }


@torch.no_grad()
def evaluate_uncertainty(
    model: nn.Module,
    dataset,
    *,
    n_samples: int = 8,
    device: torch.device,
    eval_config,
    collate_fn=None,
    num_workers: int = 0,
    predictor=None,
) -> dict[str, Any]:
    """Uncertainty AUROC of a sampling network over ``dataset`` (see the module docstring).

    Args:
        model: a network with ``predict_with_uncertainty(image, n_samples=N)`` (SegDT).
        dataset: evaluation split (sample dicts with ``image`` and ``mask``).
        n_samples: samples per image.
        device, eval_config, collate_fn, num_workers: as for
            :func:`~segmentation.evaluation.evaluate.evaluate_model` (batch size from
            ``eval_config``).
        predictor: optionally an object with ``probabilities_and_uncertainty(model, image)``, e.g.
            a :class:`~segmentation.inference.predictors.FlipTTAPredictor` over a
            ``Predictor(uncertainty=True, n_samples=N)``; default: the network's own sampler.

    Returns:
        :meth:`UncertaintyMeter.compute` plus ``n_samples``.
    """
    from segmentation.checkpoint import unwrap
    from segmentation.data.loader import eval_loader

    net = unwrap(model)
    if not hasattr(net, "predict_with_uncertainty"):
        raise ValueError(
            f"{type(net).__name__} has no predict_with_uncertainty; uncertainty is reported for "
            "sampling networks such as SegDT."
        )
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"uncertainty needs n_samples >= 2 (a variance), got {n_samples!r}.")

    def sample(m: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, variance = unwrap(m).predict_with_uncertainty(image, n_samples=n_samples)
        return (logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)), variance

    sample = sample if predictor is None else predictor.probabilities_and_uncertainty
    was_training = model.training
    model.eval()
    meter = UncertaintyMeter()
    loader = eval_loader(
        dataset, batch_size=eval_config.batch_size, num_workers=num_workers, collate_fn=collate_fn
    )
    for batch in loader:
        probs, variance = sample(model, batch["image"].to(device))
        meter.update(probs, variance, batch["mask"])
    model.train(was_training)
    return {"n_samples": getattr(predictor, "n_samples", n_samples), **meter.compute()}
