"""Skin-tone colour science: float CIELAB, Individual Typology Angle (ITA), lesion contrast.

All conversions use sRGB primaries with the D65 white point and the CIE 1976 L*a*b* formulas, in
floating point. OpenCV's 8-bit ``COLOR_RGB2LAB`` output is *not* CIELAB (L* is scaled by 255/100 and
a*, b* are offset by 128): plugging those numbers into the ITA formula turns RGB (141, 85, 54) from
-16.3 degrees into +20.1 degrees. Use :func:`rgb_to_lab` instead.

ITA = atan2(L* - 50, b*) x 180 / pi (Chardon et al., Int. J. Cosmet. Sci. 1991), evaluated per pixel
on healthy skin and summarised by the median (Kinyanjui et al., MICCAI 2020; Kalb et al., 2023
compare estimators).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "ITA_BINS",
    "rgb_to_lab",
    "lab_to_rgb",
    "ita",
    "ita_group",
    "ita_pixels",
    "healthy_skin_mask",
    "lesion_contrast",
]

# D65 reference white (CIE 1931 2-degree observer), Y normalised to 1.
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
# Linear sRGB -> XYZ (IEC 61966-2-1).
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float64,
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_RGB_TO_XYZ_NORM = (_RGB_TO_XYZ / _WHITE_D65[:, None]).astype(np.float32)
_XYZ_TO_RGB_NORM = (_XYZ_TO_RGB * _WHITE_D65[None, :]).astype(np.float32)
_u8 = np.arange(256, dtype=np.float64) / 255.0
_SRGB_TO_LINEAR_U8 = np.where(_u8 <= 0.04045, _u8 / 12.92, ((_u8 + 0.055) / 1.055) ** 2.4).astype(
    np.float32
)
_EPS = (6.0 / 29.0) ** 3  # CIE f(t) switches from the cube root to the linear segment here
_KAPPA = (29.0 / 6.0) ** 2 / 3.0

# Bins as (lower bound, exclusive; group name), from the lightest group down; the last group has no
# lower bound. chardon6: Chardon et al. 1991 (upper bounds inclusive, e.g. light = 41 < ITA <= 55,
# dark = ITA <= -30). kinyanjui8: the finer split of Kinyanjui et al. 2020; names are the ITA ranges
# in degrees.
ITA_BINS: dict[str, list[tuple[float, str]]] = {
    "chardon6": [
        (55.0, "very_light"),
        (41.0, "light"),
        (28.0, "intermediate"),
        (10.0, "tan"),
        (-30.0, "brown"),
        (-math.inf, "dark"),
    ],
    "kinyanjui8": [
        (55.0, "gt55"),
        (48.0, "48_55"),
        (41.0, "41_48"),
        (34.5, "34.5_41"),
        (28.0, "28_34.5"),
        (19.0, "19_28"),
        (10.0, "10_19"),
        (-math.inf, "le10"),
    ],
}


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB -> float CIELAB (D65), vectorised over any leading shape.

    Args:
        rgb: ``[..., 3]`` RGB; ``uint8`` is read as 0..255, floats as 0..1.

    Returns:
        ``float32 [..., 3]`` with L* in [0, 100] and a*, b* roughly in [-128, 127].
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(
            f"rgb_to_lab expects [..., 3] RGB, got shape {rgb.shape}; pass an RGB image."
        )
    if rgb.dtype == np.uint8:
        linear = _SRGB_TO_LINEAR_U8[rgb]  # exact table lookup for 8-bit input
    else:
        c = rgb.astype(np.float32)
        linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    # Flatten to [N, 3] so the 3x3 product is one BLAS call (broadcast matmul over [H, W] is slow).
    xyz = (linear.reshape(-1, 3) @ _RGB_TO_XYZ_NORM.T).reshape(linear.shape)
    f = np.where(xyz > _EPS, np.cbrt(np.maximum(xyz, _EPS)), xyz * _KAPPA + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Float CIELAB (D65) -> sRGB in [0, 1] (``float32 [..., 3]``, out-of-gamut values clipped)."""
    lab = np.asarray(lab, dtype=np.float32)
    if lab.shape[-1] != 3:
        raise ValueError(f"lab_to_rgb expects [..., 3] L*a*b*, got shape {lab.shape}.")
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 6.0 / 29.0, f**3, (f - 4.0 / 29.0) / _KAPPA)
    linear = (xyz.reshape(-1, 3) @ _XYZ_TO_RGB_NORM.T).reshape(xyz.shape)
    linear = np.clip(linear, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1.0 / 2.4) - 0.055)
    return srgb.astype(np.float32)


def ita_pixels(lab: np.ndarray) -> np.ndarray:
    """Per-pixel ITA in degrees from float CIELAB ``[..., 3]``."""
    return np.degrees(np.arctan2(lab[..., 0] - 50.0, lab[..., 2]))


def healthy_skin_mask(
    image_rgb: np.ndarray,
    exclude_mask: np.ndarray | None = None,
    *,
    lab: np.ndarray | None = None,
    dark_l: float = 12.0,
    hair_blackhat: float = 12.0,
) -> np.ndarray:
    """Boolean ``[H, W]`` mask of pixels that look like healthy skin.

    Removes (1) ``exclude_mask`` (the lesion), (2) near-black pixels with L* < ``dark_l`` (the
    dermoscope aperture, dilated by a few pixels to drop its blurred rim), and (3) thin dark
    structures (hair, ruler ticks): a morphological black-hat of L* with a kernel of ~3 % of the
    image side, thresholded at ``hair_blackhat`` L* units and dilated by one pixel to catch
    anti-aliased edges.
    """
    h, w = image_rgb.shape[:2]
    lab = rgb_to_lab(image_rgb) if lab is None else lab
    lightness = lab[..., 0]
    keep = np.ones((h, w), dtype=bool)
    if exclude_mask is not None:
        if exclude_mask.shape[:2] != (h, w):
            raise ValueError(
                f"exclude_mask has shape {exclude_mask.shape[:2]} but the image is {(h, w)}; "
                "pass the lesion mask at the image's resolution."
            )
        keep &= ~(exclude_mask > 0)
    rim = max(1, round(0.01 * max(h, w)))
    box = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * rim + 1, 2 * rim + 1))
    dark = cv2.dilate((lightness < dark_l).astype(np.uint8), box)
    keep &= dark == 0
    k = max(3, 2 * round(0.015 * max(h, w)) + 1)
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    blackhat = cv2.morphologyEx(lightness, cv2.MORPH_BLACKHAT, ellipse)
    thin = cv2.dilate((blackhat > hair_blackhat).astype(np.uint8), np.ones((3, 3), np.uint8))
    keep &= thin == 0
    return keep


def ita(
    image_rgb_uint8: np.ndarray,
    exclude_mask: np.ndarray | None = None,
    *,
    min_pixels: int = 16,
    lab: np.ndarray | None = None,
) -> float:
    """Median ITA (degrees) over healthy-skin pixels of an RGB image.

    Args:
        image_rgb_uint8: ``uint8 [H, W, 3]`` RGB.
        exclude_mask: optional ``[H, W]`` mask (nonzero = lesion) to leave out.
        min_pixels: fewer healthy pixels than this gives ``nan`` (e.g. a lesion filling the whole
            field).
        lab: the image's :func:`rgb_to_lab`, when already computed.

    Returns:
        The median ITA in degrees, or ``nan`` when too little skin is visible.
    """
    image = np.asarray(image_rgb_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"ita expects a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}; "
            "read images with segmentation.data.files.read_image."
        )
    lab = rgb_to_lab(image) if lab is None else lab
    keep = healthy_skin_mask(image, exclude_mask, lab=lab)
    if int(keep.sum()) < min_pixels:
        return float("nan")
    return float(np.median(ita_pixels(lab[keep])))


def ita_group(value: float, preset: str = "chardon6") -> str:
    """Name of the ITA bin of ``value`` under ``preset``; ``nan`` gives ``"unknown"``.

    Args:
        value: ITA in degrees.
        preset: ``"chardon6"`` or ``"kinyanjui8"`` (see ``ITA_BINS``).
    """
    if preset not in ITA_BINS:
        raise KeyError(f"unknown ITA bin preset '{preset}'; accepted: {', '.join(ITA_BINS)}.")
    if value is None or math.isnan(value):
        return "unknown"
    for lower, name in ITA_BINS[preset]:
        if value > lower:
            return name
    return ITA_BINS[preset][-1][1]


def lesion_contrast(
    image_rgb_uint8: np.ndarray,
    lesion_mask: np.ndarray,
    *,
    min_pixels: int = 4,
    lab: np.ndarray | None = None,
) -> float:
    """CIE76 Delta E between median healthy-skin Lab and median lesion Lab (``nan`` if empty).

    Args:
        image_rgb_uint8: ``uint8 [H, W, 3]`` RGB.
        lesion_mask: ``[H, W]``, nonzero = lesion.
        lab: the image's :func:`rgb_to_lab`, when already computed.
    """
    image = np.asarray(image_rgb_uint8)
    lab = rgb_to_lab(image) if lab is None else lab
    lesion = np.asarray(lesion_mask) > 0
    skin = healthy_skin_mask(image, lesion, lab=lab)
    # Hair over the lesion is dark either way; drop only aperture-black pixels from the lesion.
    lesion &= lab[..., 0] >= 1.0
    if lesion.sum() < min_pixels or skin.sum() < min_pixels:
        return float("nan")
    diff = np.median(lab[lesion], axis=0) - np.median(lab[skin], axis=0)
    return float(np.sqrt(np.sum(diff.astype(np.float64) ** 2)))
