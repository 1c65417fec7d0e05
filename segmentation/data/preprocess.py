"""Classic dermoscopy pre-processing as deterministic, albumentations-compatible transforms.

Each transform maps a uint8 ``[H, W, 3]`` RGB image to a uint8 RGB image of the same size, draws no
random numbers and leaves masks untouched (``A.ImageOnlyTransform``), so it can sit in any
albumentations pipeline. Experiments select them by name in the data section::

    data:
      preprocess: [aperture, hair_removal, shades_of_gray, clahe]   # applied in this order
      # or with arguments: [{name: clahe, clip_limit: 3.0}]

:func:`~segmentation.data.transforms.build_transform` runs them right after the resize and before
any augmentation, in the training and the evaluation pipelines alike, so lengths (kernel sizes,
radii) are in working-resolution pixels and the cost does not grow with the raw image size.

Registered names (:data:`PREPROCESSING`):

* ``hair_removal`` - DullRazor-style (Lee et al., "DullRazor: a software approach to hair removal
  from images", Computers in Biology and Medicine 1997): a morphological black-hat (closing minus
  image) of the luminance finds thin dark strokes, a threshold turns them into a hair mask, and
  Telea inpainting (Telea, J. Graphics Tools 2004) fills them. The original closes each channel with
  three line elements and interpolates bilinearly; the black-hat + inpaint form used here is the
  common modern reading. Thin dark pigment-network lines inside lesions can be softened as well.
* ``clahe`` - contrast-limited adaptive histogram equalisation (Zuiderveld, Graphics Gems IV 1994)
  on the L* channel of float CIELAB (``segmentation.data.color``), so hue and chroma are kept.
* ``aperture`` - dermoscope aperture / vignette correction: dark regions connected to the image
  corners (the black frame of a round dermoscope field) are detected and filled with the median
  colour of the field just inside their rim (``fill="median"``) or inpainted (``fill="inpaint"``).
* ``shades_of_gray`` - Shades of Gray colour constancy (Finlayson & Trezzi, Color Imaging Conference
  2004) with Minkowski norm ``power = 6``, the setting Barata et al. (IEEE JBHI 2015) found best for
  dermoscopy: the illuminant is the per-channel p-norm mean, and each channel is scaled so the
  illuminant becomes grey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from networks.registry import Registry

from .color import lab_to_rgb, rgb_to_lab

__all__ = [
    "PREPROCESSING",
    "ApertureCorrection",
    "ClaheL",
    "HairRemoval",
    "ShadesOfGray",
    "build_preprocessing",
]

PREPROCESSING = Registry("preprocessing step")


def _check_rgb_u8(img: np.ndarray, name: str) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"{name} expects a uint8 [H, W, 3] RGB image, got {img.dtype} {img.shape}; run "
            "pre-processing before Normalize (build_transform does)."
        )


def _odd(value: float, minimum: int = 3) -> int:
    k = max(minimum, int(round(value)))
    return k if k % 2 else k + 1


class _Deterministic(A.ImageOnlyTransform):
    """Base: always applied (``p=1``), no random parameters, arguments shown in ``repr``."""

    _args: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return self._args


@PREPROCESSING.register("hair_removal")
class HairRemoval(_Deterministic):
    """DullRazor-style hair removal: black-hat -> threshold -> dilate -> inpaint.

    Args:
        kernel_size: side of the elliptical structuring element of the black-hat, px; it must be
            wider than the thickest hair. ``0`` derives it from the image: ``min(H, W) / 28``
            rounded to an odd number >= 5 (9 px at 256 px).
        threshold: black-hat response (0-255 luminance levels) above which a pixel is hair.
        dilate: grow the hair mask by this many pixels so anti-aliased hair rims are inpainted
            too.
        inpaint_radius: neighbourhood radius of the Telea inpainting, px.
    """

    _args = ("kernel_size", "threshold", "dilate", "inpaint_radius")

    def __init__(
        self,
        *,
        kernel_size: int = 0,
        threshold: float = 12.0,
        dilate: int = 1,
        inpaint_radius: int = 3,
    ) -> None:
        super().__init__()
        if kernel_size < 0 or (kernel_size and kernel_size % 2 == 0):
            raise ValueError(
                f"hair_removal kernel_size must be 0 (auto) or a positive odd int, "
                f"got {kernel_size}."
            )
        if threshold <= 0 or dilate < 0 or inpaint_radius < 1:
            raise ValueError(
                f"hair_removal needs threshold > 0, dilate >= 0, inpaint_radius >= 1; got "
                f"{threshold}, {dilate}, {inpaint_radius}."
            )
        self.kernel_size, self.threshold = kernel_size, threshold
        self.dilate, self.inpaint_radius = dilate, inpaint_radius

    def hair_mask(self, img: np.ndarray) -> np.ndarray:
        """``uint8 [H, W]`` in {0, 255}: pixels the black-hat marks as hair (after dilation)."""
        _check_rgb_u8(img, "hair_removal")
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        k = self.kernel_size or _odd(min(img.shape[:2]) / 28.0, minimum=5)
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, element)
        mask = (blackhat > self.threshold).astype(np.uint8) * 255
        if self.dilate:
            size = 2 * self.dilate + 1
            mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
        return mask

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        mask = self.hair_mask(img)
        if not mask.any():
            return img
        return cv2.inpaint(img, mask, self.inpaint_radius, cv2.INPAINT_TELEA)


@PREPROCESSING.register("clahe")
class ClaheL(_Deterministic):
    """CLAHE on the L* channel of float CIELAB; a* and b* are kept.

    L* (0-100) is quantised to 256 levels for OpenCV's CLAHE (0.4 L* units per level, below a
    just-noticeable difference) and converted back with the unchanged a*, b*.

    Args:
        clip_limit: OpenCV ``clipLimit`` (contrast limit relative to a uniform histogram).
        tile_grid_size: tiles per side of the image.
    """

    _args = ("clip_limit", "tile_grid_size")

    def __init__(self, *, clip_limit: float = 2.0, tile_grid_size: int = 8) -> None:
        super().__init__()
        if clip_limit <= 0 or tile_grid_size < 1:
            raise ValueError(
                f"clahe needs clip_limit > 0 and tile_grid_size >= 1, got {clip_limit} and "
                f"{tile_grid_size}."
            )
        self.clip_limit, self.tile_grid_size = float(clip_limit), int(tile_grid_size)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        _check_rgb_u8(img, "clahe")
        lab = rgb_to_lab(img)
        lightness = np.clip(lab[..., 0] * 2.55 + 0.5, 0, 255).astype(np.uint8)
        grid = (self.tile_grid_size, self.tile_grid_size)
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=grid)
        lab[..., 0] = clahe.apply(lightness).astype(np.float32) / 2.55
        return np.clip(lab_to_rgb(lab) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@PREPROCESSING.register("aperture")
class ApertureCorrection(_Deterministic):
    """Fill the black dermoscope frame (dark regions connected to the image corners).

    A pixel is dark when all its channels are below ``threshold``; the dark connected components
    that contain an image corner form the frame. It is grown by ``dilate`` px (the soft, blurred
    rim) and filled. Images whose frame covers less than ``min_fraction`` of the area are returned
    unchanged.

    Args:
        threshold: darkness threshold on the maximum over RGB channels (0-255).
        dilate: grow the frame by this many pixels before filling.
        min_fraction: smallest frame area (fraction of the image) that is corrected.
        fill: ``"median"`` (median colour of a ``dilate + 3`` px ring of the field just inside the
            frame; cheap and flat) or ``"inpaint"`` (Telea inpainting; continues gradients).
    """

    _args = ("threshold", "dilate", "min_fraction", "fill")

    def __init__(
        self,
        *,
        threshold: float = 30.0,
        dilate: int = 2,
        min_fraction: float = 0.005,
        fill: str = "median",
    ) -> None:
        super().__init__()
        if fill not in ("median", "inpaint"):
            raise ValueError(f"aperture fill must be 'median' or 'inpaint', got {fill!r}.")
        if not 0 < threshold < 255 or dilate < 0 or not 0 <= min_fraction < 1:
            raise ValueError(
                f"aperture needs 0 < threshold < 255, dilate >= 0, 0 <= min_fraction < 1; got "
                f"{threshold}, {dilate}, {min_fraction}."
            )
        self.threshold, self.dilate = threshold, dilate
        self.min_fraction, self.fill = min_fraction, fill

    def frame_mask(self, img: np.ndarray) -> np.ndarray:
        """``uint8 [H, W]`` in {0, 255}: the detected frame after dilation (all zero if none)."""
        _check_rgb_u8(img, "aperture")
        dark = (img.max(axis=2) < self.threshold).astype(np.uint8)
        _, labels = cv2.connectedComponents(dark, connectivity=8)
        h, w = dark.shape
        corners = {labels[0, 0], labels[0, w - 1], labels[h - 1, 0], labels[h - 1, w - 1]}
        corners.discard(0)  # label 0 collects the pixels that are not dark
        frame = np.isin(labels, sorted(corners)).astype(np.uint8) * 255
        if frame.mean() / 255.0 < self.min_fraction:
            return np.zeros_like(frame)
        if self.dilate:
            size = 2 * self.dilate + 1
            frame = cv2.dilate(frame, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
        return frame

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        frame = self.frame_mask(img)
        if not frame.any():
            return img
        if self.fill == "inpaint":
            return cv2.inpaint(img, frame, 3, cv2.INPAINT_TELEA)
        size = 2 * (self.dilate + 3) + 1
        ring = cv2.dilate(frame, np.ones((size, size), np.uint8)) & ~frame
        if not ring.any():  # the frame covers the whole image: nothing to take a colour from
            return img
        out = img.copy()
        out[frame > 0] = np.median(img[ring > 0], axis=0).astype(np.uint8)
        return out


@PREPROCESSING.register("shades_of_gray")
class ShadesOfGray(_Deterministic):
    """Shades of Gray colour constancy: scale channels so their Minkowski ``power``-mean is equal.

    The illuminant estimate is ``e_c = (mean_x I_c(x)^power)^(1/power)`` over pixels brighter than
    ``ignore_below`` (so a black aperture frame does not bias it); each channel is multiplied by
    ``mean(e) / e_c``, which keeps the overall brightness (``power = 1`` is Gray World, ``inf``
    would be max-RGB).

    Args:
        power: the Minkowski norm ``p`` (6 in Barata et al. 2015).
        ignore_below: pixels whose brightest channel is below this (0-255) are left out of the
            estimate.
    """

    _args = ("power", "ignore_below")

    def __init__(self, *, power: float = 6.0, ignore_below: float = 10.0) -> None:
        super().__init__()
        if power < 1:
            raise ValueError(f"shades_of_gray power must be >= 1 (1 = Gray World), got {power}.")
        self.power, self.ignore_below = float(power), float(ignore_below)

    def illuminant(self, img: np.ndarray) -> np.ndarray:
        """``float64 [3]``: the per-channel Minkowski ``power``-mean (0-1 scale)."""
        _check_rgb_u8(img, "shades_of_gray")
        pixels = img.reshape(-1, 3)
        pixels = pixels[pixels.max(axis=1) >= self.ignore_below]
        if len(pixels) == 0:
            return np.ones(3)
        x = pixels.astype(np.float64) / 255.0
        return np.mean(x**self.power, axis=0) ** (1.0 / self.power)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        e = self.illuminant(img)
        gain = e.mean() / np.maximum(e, 1e-6)
        return np.clip(img.astype(np.float32) * gain.astype(np.float32) + 0.5, 0, 255).astype(
            np.uint8
        )


def build_preprocessing(specs: Sequence[str | Mapping[str, Any]] | None) -> list[A.BasicTransform]:
    """Build the named pre-processing steps, in order.

    Args:
        specs: names (``"clahe"``) or ``{name: ..., **kwargs}`` dicts; ``None`` or ``[]`` gives no
            step.

    Raises:
        KeyError: an unknown name (with a "did you mean").
        TypeError: an unknown argument, or a spec that is neither a name nor a mapping.
    """
    if specs is None:
        return []
    if isinstance(specs, str | Mapping):
        raise TypeError(
            f"preprocess must be a list of steps, got {specs!r}; write e.g. "
            "data.preprocess: [hair_removal, clahe]."
        )
    steps = []
    for spec in specs:
        name, kwargs = PREPROCESSING.resolve(spec)
        steps.append(PREPROCESSING.build(name, **kwargs))
    return steps
