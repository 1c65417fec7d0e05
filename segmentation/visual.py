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
