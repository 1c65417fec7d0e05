"""Deep supervision (Lee et al. 2015; nnU-Net, Isensee et al. 2021): one loss per decoder output.

Any network whose training-mode forward returns a list of logits ``[full, 1/2, 1/4, ...]`` trains
with deep supervision by giving itself a one-line ``compute_loss`` (the Trainer calls it when
present)::

    def compute_loss(self, batch, loss_fn):
        return deep_supervision_loss(self(batch["image"]), batch["mask"], loss_fn)

Each lower-resolution output is compared with the mask resized to its size by nearest neighbour
(``nearest-exact``: pixel centres, like OpenCV ``INTER_NEAREST_EXACT``), never by upsampling the
logits. Weights follow nnU-Net: ``1, 1/2, 1/4, ...`` (full resolution first), normalised to sum 1.
nnU-Net also computes the lowest decoder level and gives it weight 0; a network that never builds
that head (``NNUNet2D``) gets the same loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights ``1, 1/2, 1/4, ...`` for ``num_outputs`` outputs, normalised to sum 1.

    Example: 3 outputs -> ``[4/7, 2/7, 1/7]``.
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}.")
    weights = [0.5**i for i in range(num_outputs)]
    return [w / sum(weights) for w in weights]


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour (``nearest-exact``) resize of a label map ``long [B, H, W]``."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    resized = F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[:, 0].to(mask.dtype)  # (B, h, w)


def deep_supervision_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    mask: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of ``loss_fn`` over the outputs, each against the mask at its resolution.

    Args:
        outputs: logits ``[B, K, h_i, w_i]``, full resolution first; a single tensor (a network
            in evaluation mode, or without auxiliary heads) gives the plain ``loss_fn``.
        mask: ``long [B, H, W]`` at the full resolution.
        loss_fn: ``(logits, mask) -> scalar`` (the configured loss).
        weights: one per output; ``None`` for :func:`deep_supervision_weights`.

    Returns:
        ``(loss, logs)``: logs hold the loss's own ``terms`` (e.g. ``loss_dice``) at full
        resolution and each output's unweighted loss as ``ds_<i>`` (detached).
    """
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    weights = deep_supervision_weights(len(outputs)) if weights is None else list(weights)
    if len(weights) != len(outputs):
        raise ValueError(
            f"{len(outputs)} outputs but {len(weights)} deep-supervision weights; give one weight "
            "per output (full resolution first)."
        )
    total, logs = 0.0, {}
    for i, (logits, weight) in enumerate(zip(outputs, weights, strict=True)):
        loss = loss_fn(logits, resize_mask(mask, logits.shape[-2:]))
        if i == 0:
            logs.update({f"loss_{k}": v for k, v in getattr(loss_fn, "terms", {}).items()})
        if len(outputs) > 1:
            logs[f"ds_{i}"] = loss.detach()
        total = total + weight * loss
    return total, logs
