"""Inference beyond one forward pass: flip test-time augmentation, sliding windows, uncertainty.

A *predictor* is ``(model, image [B, C, H, W]) -> logits [B, K, H, W]``, the signature
:func:`segmentation.evaluation.evaluate.evaluate_model` accepts as ``predictor=``; so a TTA or
sliding-window evaluation measures exactly what ``tools/predict.py`` writes (through
:func:`predict_files`). The predictors here combine *probabilities* (sigmoid for one channel,
softmax for several), never raw logits: averaging logits weights confident views more and is not
what "average the predictions" means in the TTA literature (e.g. Wang et al., "Aleatoric uncertainty
estimation with test-time augmentation for medical image segmentation", Neurocomputing 2019). Their
``__call__`` converts the averaged probabilities back to logits (``logit(p)`` for one channel,
``log(p)`` for several) so that the metric code's ``sigmoid > 0.5`` / ``argmax`` binarises the
averaged probability.

Predictors nest: ``SlidingWindowPredictor(roi_size=256, base=FlipTTAPredictor())`` runs flip TTA on
every window. ``probabilities_and_uncertainty`` also carries the per-pixel variance that generative
networks (SegDT's ``predict_with_uncertainty``) return, averaged through flips and windows like the
probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmentation.checkpoint import unwrap
from segmentation.data.transforms import build_transform

__all__ = [
    "FLIP_SETS",
    "Predictor",
    "FlipTTAPredictor",
    "SlidingWindowPredictor",
    "build_predictor",
    "logits_from_probabilities",
    "output_names",
    "predict_files",
    "preprocess",
    "probabilities",
    "supports_uncertainty",
    "write_png",
]

# Flip sets by name: tuples of spatial dims flipped per view (the identity view is ``()``).
FLIP_SETS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "hflip": ((), (-1,)),
    "flips": ((), (-1,), (-2,), (-2, -1)),
}
_EPS = 1.0e-6  # keeps logit(p) finite for p in {0, 1}
LESION_CLASS = 1  # foreground channel of multi-class outputs (binarize's default foreground)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one channel, softmax over channels for several: ``[B, K, H, W]``."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)


def logits_from_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`probabilities` up to clamping: ``logit(p)`` (K = 1) or ``log(p)`` (K > 1).

    ``softmax(log(p)) == p`` when the channels sum to one, so argmax and re-softmax are preserved.
    """
    probs = probs.clamp(_EPS, 1.0 - _EPS)
    return torch.logit(probs) if probs.shape[1] == 1 else probs.log()


def supports_uncertainty(model: nn.Module) -> bool:
    """Whether the network returns a per-pixel uncertainty (``predict_with_uncertainty``)."""
    return hasattr(unwrap(model), "predict_with_uncertainty")


def preprocess(image: np.ndarray, image_size: int | None) -> torch.Tensor:
    """``uint8 [H, W, 3]`` RGB -> ImageNet-normalised ``float32 [3, S, S]`` as in evaluation.

    Uses the evaluation pipeline of :func:`~segmentation.data.transforms.build_transform` (square
    linear resize to ``image_size``, ``None`` keeps the size), so predictions see exactly what the
    validation loader fed the network.
    """
    transform = build_transform(image_size=image_size, train=False)
    tensor, _ = transform(image, np.zeros(image.shape[:2], dtype=np.uint8))
    return tensor


class Predictor:
    """Plain prediction: ``predict`` when the network has it (generative, prompted), else
    ``forward``.

    Args:
        uncertainty: also return the per-pixel variance of networks that define
            ``predict_with_uncertainty`` (``None`` for the others).
        n_samples: samples drawn for the uncertainty (generative networks only).
    """

    def __init__(self, *, uncertainty: bool = False, n_samples: int = 8) -> None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        self.uncertainty = uncertainty
        self.n_samples = n_samples

    def probabilities_and_uncertainty(
        self, model: nn.Module, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probabilities [B, K, H, W], variance [B, K, H, W] or None)``."""
        from segmentation.evaluation.evaluate import predict_logits

        net = unwrap(model)
        if self.uncertainty and hasattr(net, "predict_with_uncertainty"):
            logits, variance = net.predict_with_uncertainty(image, n_samples=self.n_samples)
            return probabilities(_at_size(logits, image)), _at_size(variance, image)
        return probabilities(predict_logits(model, image)), None

    def __call__(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` whose sigmoid/softmax is the predicted probability."""
        probs, _ = self.probabilities_and_uncertainty(model, image)
        return logits_from_probabilities(probs)


class FlipTTAPredictor(Predictor):
    """Test-time augmentation over flips: the mean of the un-flipped probabilities of every view.

    Args:
        flips: a name of :data:`FLIP_SETS` (``"flips"``: identity, horizontal, vertical, both) or a
            sequence of tuples of flipped dims (``-1`` width, ``-2`` height).
        base: the predictor run on each view (default :class:`Predictor`).
    """

    def __init__(
        self, flips: str | Sequence[Sequence[int]] = "flips", *, base: Predictor | None = None
    ) -> None:
        if isinstance(flips, str):
            if flips not in FLIP_SETS:
                raise ValueError(f"unknown flip set '{flips}'; choose one of {sorted(FLIP_SETS)}.")
            flips = FLIP_SETS[flips]
        flips = tuple(tuple(int(d) for d in view) for view in flips)
        bad = [view for view in flips if any(d not in (-1, -2) for d in view)]
        if not flips or bad:
            raise ValueError(
                f"flips must be non-empty tuples of spatial dims -1 (width) / -2 (height); got "
                f"{bad or 'nothing'}."
            )
        base = base or Predictor()
        super().__init__(uncertainty=base.uncertainty, n_samples=base.n_samples)
        self.flips, self.base = flips, base

    def probabilities_and_uncertainty(self, model, image):
        prob_sum, var_sum = None, None
        for dims in self.flips:
            view = image.flip(dims) if dims else image
            probs, variance = self.base.probabilities_and_uncertainty(model, view)
            probs = probs.flip(dims) if dims else probs  # back to the input orientation
            prob_sum = probs if prob_sum is None else prob_sum + probs
            if variance is not None:
                variance = variance.flip(dims) if dims else variance
                var_sum = variance if var_sum is None else var_sum + variance
        n = len(self.flips)
        return prob_sum / n, None if var_sum is None else var_sum / n


class SlidingWindowPredictor(Predictor):
    """MONAI ``sliding_window_inference`` over ``roi_size`` windows, blending probabilities.

    For images larger than the training size: each window is run at the network's training
    resolution and the overlapping windows are blended (Gaussian weights by default, so window
    borders count less). Images smaller than a window are padded by MONAI (with 0, the ImageNet
    mean after normalisation) and cropped back.

    Args:
        roi_size: window side (int) or ``(height, width)``; use the training image size.
        overlap: fraction of a window shared with its neighbour.
        blend: ``"gaussian"`` or ``"constant"`` (MONAI ``mode``).
        sw_batch_size: windows per forward pass.
        base: the predictor run on each batch of windows (e.g. a :class:`FlipTTAPredictor`).
    """

    def __init__(
        self,
        roi_size: int | Sequence[int],
        *,
        overlap: float = 0.25,
        blend: str = "gaussian",
        sw_batch_size: int = 4,
        base: Predictor | None = None,
    ) -> None:
        roi = (roi_size, roi_size) if isinstance(roi_size, int) else tuple(roi_size)
        if len(roi) != 2 or any(not isinstance(s, int) or s < 1 for s in roi):
            raise ValueError(f"roi_size must be a positive int or (h, w), got {roi_size!r}.")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        if blend not in ("gaussian", "constant"):
            raise ValueError(f"blend must be 'gaussian' or 'constant', got '{blend}'.")
        base = base or Predictor()
        super().__init__(uncertainty=base.uncertainty, n_samples=base.n_samples)
        self.roi_size, self.overlap, self.blend = roi, overlap, blend
        self.sw_batch_size, self.base = sw_batch_size, base

    def probabilities_and_uncertainty(self, model, image):
        from monai.inferers import sliding_window_inference

        channels: list[int] = []

        def window_fn(windows: torch.Tensor) -> torch.Tensor:
            probs, variance = self.base.probabilities_and_uncertainty(model, windows)
            channels[:] = [probs.shape[1]]
            # blend probabilities and variance in one pass: (B, K [+ K], h, w)
            return probs if variance is None else torch.cat([probs, variance], dim=1)

        blended = sliding_window_inference(
            image,
            self.roi_size,
            self.sw_batch_size,
            window_fn,
            overlap=self.overlap,
            mode=self.blend,
        )
        k = channels[0]
        variance = blended[:, k:] if blended.shape[1] > k else None
        return blended[:, :k], variance


def build_predictor(
    *,
    tta: str = "none",
    roi_size: int | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    uncertainty: bool = False,
    n_samples: int = 8,
) -> Predictor:
    """The predictor the CLI flags describe: plain, flip TTA, sliding window, or window-of-TTA."""
    predictor = Predictor(uncertainty=uncertainty, n_samples=n_samples)
    if tta != "none":
        predictor = FlipTTAPredictor(tta, base=predictor)
    if roi_size is not None:
        predictor = SlidingWindowPredictor(
            roi_size, overlap=overlap, sw_batch_size=sw_batch_size, base=predictor
        )
    return predictor


def output_names(files: Sequence[Path]) -> list[str]:
    """Output stems: the file stem, or ``stem_ext`` when two inputs share a stem."""
    stems = [f.stem for f in files]
    return [
        f"{f.stem}_{f.suffix.lstrip('.')}" if stems.count(f.stem) > 1 else f.stem for f in files
    ]


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``uint8 [H, W]`` grey or ``[H, W, 3]`` RGB as PNG (raises when OpenCV cannot)."""
    import cv2

    array = image[..., ::-1] if image.ndim == 3 else image
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write '{path}'; check the output folder is writable.")


def predict_files(
    model: nn.Module,
    files: Sequence[Path],
    out: Path,
    *,
    predictor: Predictor,
    image_size: int | None,
    device: torch.device,
    batch_size: int = 4,
) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Segment image files at their original size; write masks, overlays and uncertainty maps.

    Each image is pre-processed like evaluation (:func:`preprocess`: square resize to
    ``image_size``, ``None`` keeps the native size for sliding windows), predicted, and its
    probabilities ``[K, S, S]`` are resized back (bilinear) and binarised by
    :func:`segmentation.evaluation.metrics.binarize` (``sigmoid > 0.5``, or argmax == lesion).
    Writes ``out/masks/NAME.png`` (0 / 255), ``out/overlays/NAME.png`` and, when the predictor
    returns a variance, ``out/uncertainty/NAME.png`` (inferno, black 0, white 0.25, the largest
    variance of a probability).

    Args:
        model: the network (eval mode) on ``device``.
        files: image files; names come from :func:`output_names`.
        out: output folder (sub-folders are created).
        predictor: a :class:`Predictor` (plain, flip TTA, sliding window).
        image_size: network input side, or ``None`` for native-size inputs (one per pass).
        device: where the model runs.
        batch_size: images per pass when resized.

    Returns:
        ``(records, failed)``: per written image ``{"file", "height", "width",
        "lesion_fraction"[, "mean_variance"]}``, and ``(path, reason)`` per unreadable file.
    """
    from tqdm import tqdm

    from segmentation.data.files import read_image
    from segmentation.evaluation.metrics import binarize
    from segmentation.reporting.visual import colorize, overlay_mask

    def resized(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # [1, K, h, w]
        return F.interpolate(tensor.float(), size=size, mode="bilinear", align_corners=False)

    for folder in ("masks", "overlays", "uncertainty"):
        if folder != "uncertainty" or predictor.uncertainty:
            (out / folder).mkdir(parents=True, exist_ok=True)
    per_pass = batch_size if image_size is not None else 1  # native sizes do not stack
    names = output_names(files)
    records: list[dict] = []
    failed: list[tuple[Path, str]] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", dynamic_ncols=True)
    for start in range(0, len(files), per_pass):
        chunk, window = [], slice(start, start + per_pass)
        for path, name in zip(files[window], names[window], strict=True):
            try:
                chunk.append((path, name, read_image(path)))
            except (ValueError, OSError) as err:
                failed.append((path, str(err)))
                bar.update(1)
        if not chunk:
            continue
        batch = torch.stack([preprocess(image, image_size) for _, _, image in chunk]).to(device)
        with torch.no_grad():
            probs, variance = predictor.probabilities_and_uncertainty(model, batch)
        for i, (path, name, image) in enumerate(chunk):
            size = image.shape[:2]
            p = resized(probs[i : i + 1], size)  # [1, K, H, W] at the original size
            mask = binarize(logits_from_probabilities(p))[0].cpu().numpy().astype(bool)
            write_png(out / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
            write_png(out / "overlays" / f"{name}.png", overlay_mask(image, mask))
            record = {"file": str(path), "height": size[0], "width": size[1]}
            record["lesion_fraction"] = float(mask.mean())
            if variance is not None:
                channel = 0 if p.shape[1] == 1 else LESION_CLASS
                var = resized(variance[i : i + 1, channel : channel + 1], size)[0, 0].cpu().numpy()
                write_png(out / "uncertainty" / f"{name}.png", colorize(var, vmax=0.25))
                record["mean_variance"] = float(var.mean())
            records.append(record)
            bar.update(1)
    bar.close()
    return records, failed


def _at_size(tensor: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    if tensor.shape[-2:] == image.shape[-2:]:
        return tensor
    return F.interpolate(tensor, size=image.shape[-2:], mode="bilinear", align_corners=False)
