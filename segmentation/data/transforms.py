"""albumentations pipelines: ``(image uint8 [H, W, 3] RGB, mask uint8 [H, W]) -> (image, mask)``
tensors.

Determinism: every pipeline is an ``albumentations.Compose(seed=...)``, whose random generators are
private to the pipeline (albumentations >= 2), so the same seed gives the same sequence of
augmentations in one process.

DataLoader workers each receive a *copy* of the pipeline in the same state, so without reseeding
every worker would replay the same augmentations. Two ways to give them distinct, reproducible
streams:

* pass :func:`worker_init_fn` to the ``DataLoader``: it reseeds the dataset's transform from
  ``(transform seed, torch worker seed)``; the worker seed is ``base_seed + worker_id`` where
  ``base_seed`` comes from torch's RNG, so ``torch.manual_seed`` fixes the whole run;
* or reseed per sample with :meth:`SegmentationTransform.set_random_seed` (what the step-indexed
  training loader in ``segmentation.data.loader`` does), which also makes the stream independent of
  the number of workers.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from .channels import AppendChannels
from .preprocess import build_preprocessing

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SegmentationTransform",
    "build_transform",
    "worker_init_fn",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("default", "flips", "nnunet", "none")


def _augmentations(augment: str) -> list:
    if augment == "none":
        return []
    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if augment == "flips":
        return flips
    if augment == "nnunet":
        return _nnunet_augmentations()
    # "default": dermoscopy has no canonical orientation, so any rotation is plausible; scale and
    # shift stay moderate so small lesions survive. Out-of-frame corners are filled with black (like
    # a dermoscope aperture) and background in the mask. Hue jitter is kept small: it changes the
    # apparent skin tone.
    return [
        *flips,
        A.Affine(
            rotate=(-180, 180),
            scale=(0.85, 1.15),
            translate_percent=(-0.0625, 0.0625),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=0.7,
        ),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15, hue=0.02, p=0.8),
    ]


def _nnunet_augmentations() -> list:
    """nnU-Net's 2-D training augmentations (v2 defaults) in albumentations, in its order.

    Probabilities and ranges are nnU-Net's: rotation (any angle) and scaling (0.7-1.4) each with
    p 0.2; Gaussian noise p 0.1 (nnU-Net: variance U(0, 0.1) of z-scored data; here std up to
    0.06 of the 0-255 range, about 0.3 of a dermoscopy image's pixel std); Gaussian blur p 0.2,
    sigma 0.5-1; multiplicative brightness 0.75-1.25 p 0.15; contrast 0.75-1.25 around the mean
    p 0.15; low resolution (nearest down to 0.5-1, cubic back up) p 0.25; gamma 0.7-1.5 on the
    inverted image p 0.1 and on the image p 0.3; mirroring on both axes. Out-of-frame pixels are
    black (a dermoscope aperture) and background in the mask, as in ``default``.
    """
    spatial = dict(
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=0.2,
    )
    gamma = dict(gamma_limit=(70, 150), p=1.0)
    return [
        A.Affine(rotate=(-180, 180), **spatial),
        A.Affine(scale=(0.7, 1.4), **spatial),
        A.GaussNoise(std_range=(0.0, 0.06), p=0.1),
        A.GaussianBlur(sigma_limit=(0.5, 1.0), p=0.2),
        A.ColorJitter(brightness=(0.75, 1.25), contrast=0, saturation=0, hue=0, p=0.15),
        A.ColorJitter(brightness=0, contrast=(0.75, 1.25), saturation=0, hue=0, p=0.15),
        A.Downscale(
            scale_range=(0.5, 1.0),
            interpolation_pair={"downscale": cv2.INTER_NEAREST, "upscale": cv2.INTER_CUBIC},
            p=0.25,
        ),
        A.Sequential([A.InvertImg(p=1.0), A.RandomGamma(**gamma), A.InvertImg(p=1.0)], p=0.1),
        A.RandomGamma(**{**gamma, "p": 0.3}),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
    ]


class SegmentationTransform:
    """Callable wrapper around an albumentations ``Compose`` that returns torch tensors.

    Call: ``transform(image, mask)`` with ``image`` uint8 ``[H, W, 3]`` RGB and ``mask`` uint8 ``[H,
    W]`` in {0, 1}; returns ``(image float32 [C, H', W']`` ImageNet-normalised (``C = 3`` plus any
    extra channels), ``mask int64 [H', W'])``.

    Attributes:
        compose: the underlying ``albumentations.Compose``.
        seed: the seed the pipeline was built (or last reseeded) with.
    """

    def __init__(self, compose: A.Compose, seed: int) -> None:
        self.compose = compose
        self.seed = seed

    def set_random_seed(self, seed: int) -> None:
        """Restart the augmentation stream from ``seed`` (used per worker or per sample)."""
        self.seed = int(seed)
        self.compose.set_random_seed(self.seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"transform expects a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}."
            )
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask shape {mask.shape} differs from image shape {image.shape[:2]}; "
                "image and mask must have the same height and width."
            )
        out = self.compose(image=image, mask=mask)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))
        return image_t, mask_t

    def __repr__(self) -> str:
        return f"SegmentationTransform(seed={self.seed}, compose={self.compose!r})"


def build_transform(
    *,
    image_size: int | None,
    train: bool,
    augment: str = "default",
    seed: int = 0,
    preprocess=(),
    extra_channels=(),
) -> SegmentationTransform:
    """Build the train or validation pipeline.

    Args:
        image_size: output side (square resize: linear for images, nearest for masks); ``None``
            keeps the input size (useful when images are already at the working resolution).
        train: add the augmentations named by ``augment``; validation pipelines only resize and
            normalise.
        augment: ``"default"`` (flips + affine rotate/scale/shift + colour jitter), ``"flips"``,
            ``"nnunet"`` (nnU-Net's 2-D set, :func:`_nnunet_augmentations`) or ``"none"``.
        seed: seed of the pipeline's private random generators.
        preprocess: deterministic pre-processing steps run after the resize and before any
            augmentation (names or ``{name, **kwargs}``, see ``segmentation.data.preprocess``).
        extra_channels: channel extractors appended after ``Normalize`` (see
            ``segmentation.data.channels``); the output then has ``3 + count_extra_channels``
            channels.

    Returns:
        A :class:`SegmentationTransform`.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment '{augment}'; accepted: {', '.join(AUGMENTATIONS)}.")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")
    steps = []
    if image_size is not None:
        steps.append(
            A.Resize(
                image_size,
                image_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    steps += build_preprocessing(preprocess)
    if train:
        steps += _augmentations(augment)
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0))
    if extra_channels:
        steps.append(AppendChannels(extra_channels, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return SegmentationTransform(A.Compose(steps, seed=seed), seed)


def _find_transform(dataset):
    # Unwrap Subset / wrapper datasets (anything with a `.dataset`) until one has a reseedable
    # transform.
    for _ in range(8):
        transform = getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_seed"):
            return transform
        dataset = getattr(dataset, "dataset", None)
        if dataset is None:
            return None
    return None


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker its own reproducible augmentation stream.

    Use as ``DataLoader(..., worker_init_fn=worker_init_fn)``. The new seed mixes the transform's
    seed with torch's per-worker seed through ``np.random.SeedSequence``.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    transform = _find_transform(info.dataset)
    if transform is not None:
        mixed = np.random.SeedSequence([transform.seed % 2**32, info.seed % 2**32])
        transform.set_random_seed(int(mixed.generate_state(1)[0]))
