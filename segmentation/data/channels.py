"""Extra input channels appended to RGB: wavelet detail sub-bands and local binary patterns.

Selected by name in the data section; the dataset's ``in_channels`` follows, so every network is
built with the right input width (``segmentation.training.build.model_spec`` reads it)::

    data:
      extra_channels: [wavelet_haar, lbp]     # 3 + 3 + 1 = 7 input channels

Where they are computed: :class:`AppendChannels` is the last step of the pipeline built by
:func:`~segmentation.data.transforms.build_transform`, after ``Normalize``. It de-normalises the RGB
channels (exact inverse of the ImageNet normalisation), computes each extractor on that augmented,
pre-processed image and appends the maps, already normalised to roughly zero mean and unit scale.
Computing them after augmentation keeps them aligned with the image and the mask, and the same code
path runs in training and evaluation.

Registered extractors (:data:`CHANNELS`), all on the BT.601 luma of the image in [0, 1]:

* ``wavelet_haar``, ``wavelet_db2`` - the three detail sub-bands (horizontal, vertical, diagonal) of
  a one-level stationary (undecimated) 2-D wavelet transform (Nason & Silverman, 1995) from
  PyWavelets, at full resolution; odd sizes are reflect-padded. Each map is standardised per image
  (zero mean, unit standard deviation floored at 1e-3), since detail energy varies a lot between
  images.
* ``lbp`` - rotation-invariant uniform local binary patterns (Ojala et al., IEEE TPAMI 2002) from
  scikit-image with ``points`` neighbours at ``radius`` px (reflect-padded, so border pixels get
  real codes); the ``points + 2`` codes are mapped linearly to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
import pywt
from skimage.feature import local_binary_pattern

from networks.registry import Registry

__all__ = ["CHANNELS", "AppendChannels", "count_extra_channels", "lbp_maps", "wavelet_subbands"]

CHANNELS = Registry("extra channel extractor")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ _LUMA  # (H, W)


def wavelet_subbands(rgb: np.ndarray, *, wavelet: str = "haar") -> np.ndarray:
    """One-level stationary wavelet detail sub-bands of the luma.

    Args:
        rgb: float ``[H, W, 3]`` RGB in [0, 1].
        wavelet: a PyWavelets discrete wavelet name (``haar``, ``db2``, ...).

    Returns:
        ``float32 [H, W, 3]``: horizontal, vertical and diagonal details, standardised per map.
    """
    gray = _luma(rgb)
    h, w = gray.shape
    # swt2 needs even sides at level 1; reflect-pad one pixel and crop back.
    padded = np.pad(gray, ((0, h % 2), (0, w % 2)), mode="reflect")
    coeffs = pywt.swt2(padded, wavelet, level=1, trim_approx=True, norm=True)
    details = np.stack(coeffs[1], axis=-1)[:h, :w].astype(np.float32)  # (H, W, 3)
    details -= details.mean(axis=(0, 1), keepdims=True)
    details /= np.maximum(details.std(axis=(0, 1), keepdims=True), 1e-3)
    return details


def lbp_maps(rgb: np.ndarray, *, points: int = 8, radius: float = 1.0) -> np.ndarray:
    """Uniform LBP codes of the luma, mapped to [-1, 1].

    Args:
        rgb: float ``[H, W, 3]`` RGB in [0, 1].
        points: circularly symmetric neighbours ``P``.
        radius: circle radius ``R`` in pixels.

    Returns:
        ``float32 [H, W, 1]``.
    """
    gray = np.clip(_luma(rgb) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # scikit-image reads neighbours outside the image as 0; reflect-pad so borders get real codes
    pad = int(np.ceil(radius)) + 1
    padded = np.pad(gray, pad, mode="reflect")
    codes = local_binary_pattern(padded, points, radius, method="uniform")[pad:-pad, pad:-pad]
    return (codes.astype(np.float32) * (2.0 / (points + 1)) - 1.0)[..., None]


CHANNELS.register("wavelet_haar", wavelet_subbands, wavelet="haar")
CHANNELS.register("wavelet_db2", wavelet_subbands, wavelet="db2")
CHANNELS.register("lbp", lbp_maps)
_WIDTH = {"wavelet_haar": 3, "wavelet_db2": 3, "lbp": 1}


def _resolve(specs: Sequence[str | Mapping[str, Any]] | None) -> list[tuple[str, dict]]:
    if specs is None:
        return []
    if isinstance(specs, str | Mapping):
        raise TypeError(
            f"extra_channels must be a list, got {specs!r}; write e.g. "
            "data.extra_channels: [wavelet_haar, lbp]."
        )
    out = []
    for spec in specs:
        out.append(CHANNELS.resolve(spec, bound=("rgb",)))
    return out


def count_extra_channels(specs: Sequence[str | Mapping[str, Any]] | None) -> int:
    """Number of channels the extractors named in ``specs`` append (validates the names)."""
    return sum(_WIDTH[name] for name, _ in _resolve(specs))


class AppendChannels(A.ImageOnlyTransform):
    """Append extra channels to a normalised RGB image (last step of a pipeline).

    Args:
        specs: extractor names or ``{name: ..., **kwargs}`` dicts (see :data:`CHANNELS`).
        mean, std: the normalisation applied before this step, undone to get RGB in [0, 1].

    Call: float ``[H, W, 3]`` normalised RGB -> float32 ``[H, W, 3 + count_extra_channels]``.
    """

    def __init__(
        self,
        specs: Sequence[str | Mapping[str, Any]],
        *,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(p=1.0)
        self.specs = list(specs)
        self.resolved = _resolve(self.specs)
        self.num_channels = sum(_WIDTH[name] for name, _ in self.resolved)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != 3 or not np.issubdtype(img.dtype, np.floating):
            raise ValueError(
                f"AppendChannels expects a normalised float [H, W, 3] image, got {img.dtype} "
                f"{img.shape}; place it after Normalize (build_transform does)."
            )
        rgb = np.clip(img * self.std + self.mean, 0.0, 1.0)
        maps = [CHANNELS.build(name, rgb=rgb, **kwargs) for name, kwargs in self.resolved]
        return np.concatenate([img.astype(np.float32), *maps], axis=-1)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("specs",)
