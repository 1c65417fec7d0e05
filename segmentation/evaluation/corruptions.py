"""Image corruptions at five severities for robustness evaluation, in the spirit of ImageNet-C
(Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019), with dermoscopy artefacts drawn by the synthetic generator's own
primitives (``segmentation.data.procedural``).

Determinism: a corrupted image is a pure function of ``(image, name, severity, seed, index)``. The
random stream is seeded from ``(seed, name, index)`` *without* the severity, so the severities of
one image share their noise field, hair strands and marks: severity 3 adds strands to severity 2's
instead of drawing new ones, which makes the degradation monotone per image, not only on average.

Lengths (blur sigma, stroke width) are given for a 256-px image and scale with
``min(H, W) / 256``; :class:`CorruptedDataset` corrupts at the working resolution (after the
resize, before pre-processing and normalisation), where a deployed model would see them.

=====================  ===========================================================================
name                   severity 1 .. 5
=====================  ===========================================================================
gaussian_noise         additive N(0, sigma), sigma = 0.02, 0.04, 0.06, 0.09, 0.12 (of full range)
gaussian_blur          sigma = 1.0, 1.5, 2.5, 4.0, 6.0 px
jpeg                   quality 80, 50, 30, 15, 8 (OpenCV encoder)
brightness_contrast    contrast x 0.85, 0.7, 0.55, 0.4, 0.3 about the mean, brightness +-0.04,
                       0.08, 0.12, 0.16, 0.2 (sign drawn per image)
hair                   3, 6, 12, 20, 39 hair strands (generator strokes: dark, brown, white)
ruler_ink              a ruler, plus 0, 1, 2, 3, 4 violet skin-marker arcs (width 2-4 px)
=====================  ===========================================================================
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import cv2
import numpy as np
from torch.utils.data import Dataset

from networks.registry import Registry
from segmentation.data.procedural import draw_artefacts

__all__ = ["CORRUPTIONS", "SEVERITIES", "CorruptedDataset", "corrupt"]

CORRUPTIONS = Registry("corruption")
SEVERITIES = (1, 2, 3, 4, 5)
_INK = np.array([96, 52, 150], dtype=np.float32)  # gentian-violet skin marker, RGB
_MAX_INK = 4


def _scale(image: np.ndarray) -> float:
    return min(image.shape[:2]) / 256.0


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _composite(image: np.ndarray, cov: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Alpha-blend a stroke layer (coverage uint8 ``[S, S]``, colour ``[S, S, 3]``) onto
    ``image``."""
    h, w = image.shape[:2]
    a = (cov[:h, :w].astype(np.float32) / 255.0)[..., None]
    out = image.astype(np.float32) * (1 - a) + col[:h, :w].astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.02, 0.04, 0.06, 0.09, 0.12)[severity - 1]
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return _to_u8(image.astype(np.float32) / 255.0 + sigma * noise)


@CORRUPTIONS.register("gaussian_blur")
def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (1.0, 1.5, 2.5, 4.0, 6.0)[severity - 1] * _scale(image)
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


@CORRUPTIONS.register("jpeg")
def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (80, 50, 30, 15, 8)[severity - 1]
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {image.shape}.")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


@CORRUPTIONS.register("brightness_contrast")
def brightness_contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    contrast = (0.85, 0.7, 0.55, 0.4, 0.3)[severity - 1]
    shift = (0.04, 0.08, 0.12, 0.16, 0.2)[severity - 1] * (1.0 if rng.random() < 0.5 else -1.0)
    x = image.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _to_u8((x - mean) * contrast + mean + shift)


@CORRUPTIONS.register("hair")
def hair(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    count = (3, 6, 12, 20, 39)[severity - 1]
    size = max(image.shape[:2])
    cov, col, _ = draw_artefacts(rng, {"hair_count": count, "ruler": False, "bubbles": False}, size)
    return _composite(image, cov, col)


@CORRUPTIONS.register("ruler_ink")
def ruler_ink(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    size = max(image.shape[:2])
    s = _scale(image)
    cov, col, _ = draw_artefacts(rng, {"hair_count": 0, "ruler": True, "bubbles": False}, size)
    out = _composite(image, cov, col)
    marks = rng.random((_MAX_INK, 6))  # fixed draws: the marks of severity k are kept at k + 1
    ink = np.zeros((size, size), np.uint8)
    for m in marks[: severity - 1]:
        centre = (int(m[0] * size), int(m[1] * size))
        axes = (int((0.06 + 0.14 * m[2]) * size), int((0.06 + 0.14 * m[3]) * size))
        start = 360.0 * m[4]
        thickness = max(1, round((2 + 2 * m[5]) * s))
        cv2.ellipse(ink, centre, axes, 0.0, start, start + 200.0, 255, thickness, cv2.LINE_AA)
    ink = (ink.astype(np.float32) * 0.8).astype(np.uint8)  # markers are translucent
    return _composite(out, ink, np.broadcast_to(_INK, (size, size, 3)))


def corrupt(image: np.ndarray, name: str, severity: int, *, seed: int, index: int) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1-5; 0 returns the image) to one image.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        name: a registered corruption (:data:`CORRUPTIONS`).
        severity: 0 (clean) to 5.
        seed: evaluation seed.
        index: the image's position in its split (seeds its random stream).

    Returns:
        uint8 ``[H, W, 3]``.
    """
    func: Callable = CORRUPTIONS.get(name)[0]
    if not isinstance(severity, int) or not 0 <= severity <= max(SEVERITIES):
        raise ValueError(f"severity must be an int in 0..{max(SEVERITIES)}, got {severity!r}.")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"corrupt expects a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}."
        )
    if severity == 0:
        return image
    key = zlib.crc32(name.encode())  # stable across processes, unlike hash()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), key, int(index)]))
    return func(image, severity, rng)


class CorruptedDataset(Dataset):
    """An evaluation split whose images are corrupted before the split's own transform.

    Items are built as ``load(i)`` -> resize to ``image_size`` (linear for the image, nearest for
    the mask; the transform's own resize is then the identity) -> :func:`corrupt` ->
    ``base.transform`` (pre-processing, normalisation, extra channels), so pre-processing meets
    the corrupted image as it would in deployment.

    Args:
        base: a dataset with ``load(i) -> (image uint8, mask uint8, meta)``, ``transform`` and
            ``ids`` (every dataset of ``segmentation.data``).
        corruption: a :data:`CORRUPTIONS` name, or ``None`` for the clean images through the same
            path.
        severity: 1-5 (ignored when ``corruption`` is ``None``).
        seed: corruption seed.
        image_size: working resolution (the data section's ``image_size``); ``None`` keeps the
            stored size.
        indices: evaluate only these positions of ``base`` (default: all).
    """

    def __init__(
        self,
        base,
        corruption: str | None,
        severity: int = 1,
        *,
        seed: int = 0,
        image_size: int | None = None,
        indices=None,
    ) -> None:
        for attr in ("load", "transform", "ids"):
            if not hasattr(base, attr):
                raise TypeError(
                    f"CorruptedDataset needs a dataset with load(), transform and ids; "
                    f"{type(base).__name__} has no '{attr}'."
                )
        if corruption is not None:
            CORRUPTIONS.get(corruption)
            if severity not in SEVERITIES:
                raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}.")
        self.base, self.corruption, self.severity = base, corruption, severity
        self.seed, self.image_size = int(seed), image_size
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.in_channels = base.in_channels
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        image, mask, meta = self.base.load(index)
        if self.image_size is not None and image.shape[:2] != (self.image_size,) * 2:
            size = (self.image_size, self.image_size)
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if self.corruption is not None:
            image = corrupt(image, self.corruption, self.severity, seed=self.seed, index=index)
        image_t, mask_t = self.base.transform(image, mask)
        return {"image": image_t, "mask": mask_t, "id": self.base.ids[index], "meta": dict(meta)}
