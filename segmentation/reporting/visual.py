"""Pictures for people: de-normalised images and mask contours (TensorBoard panels, overlays,
reports)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised ``[3, H, W]`` tensor -> ``[H, W, 3]`` uint8 RGB."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.detach().cpu().float()[:3] * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def draw_contours(
    image: np.ndarray, masks: dict[tuple[int, int, int], np.ndarray], thickness: int = 1
):
    """Draw the outline of each binary mask ``[H, W]`` on a copy of ``image`` in its RGB colour."""
    out = np.ascontiguousarray(image.copy())
    for colour, mask in masks.items():
        contours, _ = cv2.findContours(
            (np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def contour_thickness(shape: tuple[int, ...]) -> int:
    """A contour width that stays visible on large images: 1 px per 256 px of the shorter side."""
    return max(1, round(min(shape[:2]) / 256))


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    colour: tuple[int, int, int] = (255, 0, 0),
    alpha: float = 0.25,
    thickness: int | None = None,
    reference: np.ndarray | None = None,
    reference_colour: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB with the mask tinted (``alpha``) and outlined in ``colour``.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        mask: binary ``[H, W]`` (non-zero = lesion), same size as ``image``.
        colour: RGB of the predicted outline and tint.
        alpha: tint opacity inside the mask (0 disables the tint).
        thickness: outline width in pixels; default :func:`contour_thickness`.
        reference: optional ground-truth ``[H, W]`` outlined in ``reference_colour`` (no tint).
    """
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask {mask.shape} and image {image.shape[:2]} differ in size; resize the mask to the "
            "image (nearest) first."
        )
    out = image.astype(np.float32)
    inside = np.asarray(mask) > 0
    out[inside] = (1 - alpha) * out[inside] + alpha * np.asarray(colour, dtype=np.float32)
    out = out.round().astype(np.uint8)
    masks = {colour: inside}
    if reference is not None:
        masks = {reference_colour: np.asarray(reference) > 0, **masks}
    return draw_contours(out, masks, thickness or contour_thickness(image.shape))


def colorize(values: np.ndarray, vmax: float, colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """``float [H, W]`` in ``[0, vmax]`` -> ``uint8 [H, W, 3]`` RGB through an OpenCV colormap."""
    scaled = np.clip(np.asarray(values, dtype=np.float32) / vmax, 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).round().astype(np.uint8), colormap)
    return np.ascontiguousarray(bgr[..., ::-1])
