"""Label-free post-processing of binary lesion masks (``docs/protocol.md``).

Each step maps a boolean mask ``[H, W]`` to a boolean mask and never looks at the ground truth.
Steps are named (:data:`POSTPROCESSING`) and chained in the order given; ``tools/evaluate.py
--postprocess lcc,fill_holes`` reports the metrics with and without them. Inside the library they
plug into :func:`~segmentation.evaluation.evaluate.evaluate_model` as a predictor::

    predictor = postprocessed_predictor(["lcc", "fill_holes"])
    metrics, rows = evaluate_model(model, dataset, ..., predictor=predictor)

* ``lcc`` - keep the largest 8-connected component (one lesion per image, the ISIC assumption;
  it removes true second lesions too, which is why it is optional).
* ``fill_holes`` - fill background regions not connected to the image border
  (``scipy.ndimage.binary_fill_holes``).
* ``opening`` - morphological opening with a disc of ``radius`` px: removes specks and thin spurs
  narrower than the disc.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage

from networks.registry import Registry
from segmentation.evaluation.evaluate import predict_logits

__all__ = [
    "POSTPROCESSING",
    "build_postprocessing",
    "fill_holes",
    "largest_component",
    "opening",
    "parse_steps",
    "postprocess_mask",
    "postprocessed_predictor",
]

POSTPROCESSING = Registry("post-processing step")
# Logit magnitude written for post-processed pixels: far from the 0 decision boundary.
_LOGIT = 20.0


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} expects a 2-D mask [H, W], got shape {mask.shape}.")
    return mask.astype(bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected foreground component (an empty mask stays empty)."""
    mask = _check_mask(mask, "lcc")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:  # background only, or one component
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # ties: lowest label (raster order)
    return labels == largest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions enclosed by foreground (not 4-connected to the image border)."""
    return ndimage.binary_fill_holes(_check_mask(mask, "fill_holes"))


def opening(mask: np.ndarray, *, radius: int = 2) -> np.ndarray:
    """Morphological opening with a disc of ``radius`` px (erosion then dilation)."""
    mask = _check_mask(mask, "opening")
    if not isinstance(radius, int) or radius < 1:
        raise ValueError(f"opening radius must be a positive int (px), got {radius!r}.")
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disc).astype(bool)


POSTPROCESSING.register("lcc", largest_component)
POSTPROCESSING.register("fill_holes", fill_holes)
POSTPROCESSING.register("opening", opening)


def parse_steps(text: str | Sequence[str] | None) -> list[str]:
    """``"lcc,fill_holes"`` (or a list) -> validated step names (KeyError with "did you mean")."""
    if text is None:
        return []
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    for name in names:
        POSTPROCESSING.get(name)
    return names


def build_postprocessing(steps: Sequence[str | dict]) -> Callable[[np.ndarray], np.ndarray]:
    """One function ``mask [H, W] -> mask`` applying ``steps`` (names or ``{name, **kwargs}``)."""
    funcs = []
    for step in steps:
        name, kwargs = POSTPROCESSING.resolve(step, bound=("mask",))
        target = POSTPROCESSING.get(name)[0]
        funcs.append((target, kwargs))

    def apply(mask: np.ndarray) -> np.ndarray:
        for func, kwargs in funcs:
            mask = func(mask, **kwargs)
        return mask

    return apply


def postprocess_mask(mask: np.ndarray, steps: Sequence[str | dict]) -> np.ndarray:
    """Apply ``steps`` to one boolean mask ``[H, W]``."""
    return build_postprocessing(steps)(mask)


def postprocessed_predictor(
    steps: Sequence[str | dict], predictor: Callable = predict_logits
) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """Wrap a ``(model, image) -> logits`` predictor so its binarised output is post-processed.

    One-channel logits are binarised with ``logit > 0`` (= ``sigmoid > 0.5``, as the metrics do),
    post-processed per image and returned as ``+-20`` logits ``[B, 1, H, W]``. Multi-class logits
    are not supported (a foreground step would need a policy for the freed pixels).
    """
    apply = build_postprocessing(steps)

    def run(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
        logits = predictor(model, image)
        if logits.shape[1] != 1:
            raise ValueError(
                f"post-processing supports one-channel (binary) logits, got {logits.shape[1]} "
                "channels; evaluate without --postprocess for multi-class networks."
            )
        masks = (logits[:, 0] > 0).cpu().numpy()  # (B, H, W)
        out = np.stack([apply(m) for m in masks])
        sign = torch.from_numpy(out).to(logits.device, torch.float32) * 2 - 1  # (B, H, W) in +-1
        return (_LOGIT * sign)[:, None]  # (B, 1, H, W)

    return run
