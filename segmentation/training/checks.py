"""Set-up checks of a training run: each runs before anything is written into the run folder.

A problem found here costs seconds instead of a failure after the first training steps, and it
leaves an existing run (``config.yaml``, checkpoints, ``metrics.json``) untouched. Every check
raises a :class:`~segmentation.errors.UserError` whose message names the key or file and the fix.
"""

from __future__ import annotations

import torch
from torch import nn

from segmentation.distributed import DistInfo
from segmentation.errors import ConfigError, DataError

__all__ = [
    "check_batch_fits",
    "check_image_size",
    "check_masks_not_all_empty",
    "check_resume_spec",
]


def check_batch_fits(train_set, global_batch: int, dist_info: DistInfo) -> None:
    """The training split must fill one global batch (the loader drops incomplete batches).

    Raises:
        ConfigError: ``train.batch_size`` x processes exceeds the number of training images.
    """
    n = len(train_set)
    if n >= global_batch:
        return
    per_process = global_batch // dist_info.world_size
    raise ConfigError(
        f"train.batch_size = {per_process} x {dist_info.world_size} process(es) = "
        f"{global_batch} images per step, but the training split has {n} image(s); lower "
        f"train.batch_size to at most {max(1, n // dist_info.world_size)} or add data."
    )


def check_masks_not_all_empty(dataset, name: str) -> None:
    """Refuse a split whose masks are all empty (read until the first non-empty one).

    A split without any lesion pixel trains nothing and validates to Dice 1 (empty vs empty).
    Datasets that do not read masks from files (``synthetic``) are not checked. Reading a mask
    also runs the per-file checks of :func:`~segmentation.data.files.read_mask`.

    Raises:
        DataError: every mask of the split is empty.
    """
    load_mask = getattr(dataset, "load_mask", None)
    if load_mask is None:
        return
    for index in range(len(dataset)):
        if load_mask(index).any():
            return
    threshold = getattr(dataset, "mask_threshold", None)
    rule = "> 128" if threshold is None else f"> data.mask_threshold = {threshold}"
    raise DataError(
        f"every one of the {len(dataset)} masks of split '{getattr(dataset, 'split', '?')}' of "
        f"'{name}' is empty (no pixel {rule}), so nothing can be learned and empty-vs-empty "
        "scores 1. If the lesion is stored with small values (masks of 0 and 1), set "
        "data.mask_threshold: 0; otherwise check the mask folder and the split."
    )


def check_resume_spec(spec: dict, ckpt: dict) -> None:
    """A resumed run keeps the checkpoint's network (name and constructor arguments).

    Raises:
        ConfigError: listing every argument that differs, with the fix.
    """
    saved = ckpt["model_spec"]
    if spec == saved:
        return
    diffs = []
    if spec["name"] != saved["name"]:
        diffs.append(f"name: checkpoint {saved['name']}, now {spec['name']}")
    now, before = spec["kwargs"], saved["kwargs"]
    for key in sorted(set(now) | set(before)):
        old, new = before.get(key, "unset"), now.get(key, "unset")
        if old != new:
            diffs.append(f"{key}: checkpoint {old}, now {new}")
    raise ConfigError(
        f"cannot resume: the network differs from the checkpoint's ({'; '.join(diffs)}). A "
        "resumed run keeps its network: drop the model override(s) (or the changed model or "
        "data section of --cfg), or start a new run with another --out."
    )


def check_image_size(
    model: nn.Module, spec: dict, image_size: int | None, device: torch.device
) -> None:
    """The network must accept ``data.image_size`` (e.g. U-Net: a multiple of ``2**depth``).

    Asks the network itself: its ``check_input_shape(x)`` method when it has one, else one
    forward pass of a zero image in eval mode without gradients (the random state is restored,
    so the run is unchanged). Skipped when ``image_size`` is None (stored sizes).

    Raises:
        ConfigError: quoting the network's own message (divisor and a padded size).
    """
    if image_size is None:
        return
    x = torch.zeros(1, spec["kwargs"]["in_channels"], image_size, image_size, device=device)
    check = getattr(model, "check_input_shape", None)
    try:
        if callable(check):
            check(x)
        else:
            devices = [device] if device.type == "cuda" else []
            was_training = model.training
            # oracle-prompted networks (SAM family, box/point) sample their prompt from a mask
            prompted = getattr(model, "prompt_source", None) == "oracle"
            mask = torch.ones(1, image_size, image_size, dtype=torch.long, device=device)
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model.eval()
                try:
                    model(x, prompt_mask=mask) if prompted else model(x)
                finally:
                    model.train(was_training)
    except ValueError as err:
        raise ConfigError(
            f"data.image_size = {image_size} does not fit network '{spec['name']}': {err} "
            "Change data.image_size accordingly."
        ) from None
