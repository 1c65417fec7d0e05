"""Prompts for the SAM-based segmenters and the prompted-network contract they share.

Prompt modes (constructor argument ``prompt``):

* ``"none"`` - automatic segmentation with SAM's *empty prompt*: no sparse token and the learned
  "no mask" dense embedding of the frozen prompt encoder. Nothing is taken from the ground truth,
  so the numbers are comparable with every other dermseg network. (We chose the empty prompt over
  a new learned prompt token: it adds no parameter, is exactly what SAM does without prompts, and
  the trainable mask decoder learns to segment the lesion from it.)
* ``"box"`` / ``"point"`` - a box (tight bounding box, randomly jittered in training) or one point
  (a random foreground pixel in training; the pixel farthest from the lesion border at evaluation)
  sampled from a mask. During training the mask is the ground truth. At evaluation it is either the
  ground truth - an **oracle prompt**, ``prompt_source == "oracle"``, which must be labelled as such
  in every table - or a mask provided by another network (``prompt_source == "provided"``).

A subclass may accept more kinds (``prompt_kinds``); those in ``automatic_prompts`` take nothing
from a mask and are never oracle prompts (SAM 3: ``"text"``). ``"exemplar"`` (SAM 3) is sampled
like ``"box"``; the network decides what to do with the box.

:class:`PromptedSegmenter` is the base of every SAM-family network: besides the prompt contract it
owns what the adapters share - which parameters are frozen (:meth:`~PromptedSegmenter.freeze`),
loading an official checkpoint with its key report (:meth:`~PromptedSegmenter.load_checkpoint`,
kept in ``load_report``), and the order of the two at construction. Subclasses only say which
prefixes are frozen, new, or unused.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from networks.common import load_pretrained

logger = logging.getLogger(__name__)

PROMPTS = ("none", "box", "point")
PROMPT_SOURCES = ("oracle", "provided")


def boxes_from_masks(
    mask: torch.Tensor, *, jitter: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bounding boxes of the foreground of ``mask`` (long/bool ``[B, H, W]``).

    Args:
        jitter: each side moves by up to ``jitter`` x the box side, uniformly at random
            (MedSAM-style perturbation in training); 0 gives the tight box.
        generator: random generator for the jitter.

    Returns:
        float ``[B, 4]`` ``(x0, y0, x1, y1)`` in pixel indices (inclusive); an empty mask gives the
        whole image.
    """
    b, h, w = mask.shape
    boxes = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0]).repeat(b, 1)
    for i in range(b):
        ys, xs = torch.nonzero(mask[i] > 0, as_tuple=True)
        if ys.numel():
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    if jitter > 0:
        side = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)  # (B, 4): w, h, w, h
        noise = torch.rand(b, 4, generator=generator) * 2 - 1
        boxes = boxes + (noise * jitter * side).round()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    return boxes.to(mask.device)


def points_from_masks(
    mask: torch.Tensor, *, random: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point prompt per mask (``[B, H, W]``).

    Args:
        random: a uniformly random foreground pixel (training); otherwise the foreground pixel
            farthest from the background (deterministic evaluation prompt).

    Returns:
        coords float ``[B, 1, 2]`` (x, y) and labels long ``[B, 1]``: 1 (positive) on a foreground
        pixel; an empty mask gives a negative point (label 0) at the image centre.
    """
    b, h, w = mask.shape
    coords = torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).repeat(b, 1, 1)
    labels = torch.zeros(b, 1, dtype=torch.long)
    for i in range(b):
        fg = mask[i] > 0
        if not fg.any():
            continue
        if random:
            ys, xs = torch.nonzero(fg, as_tuple=True)
            j = torch.randint(ys.numel(), (1,), generator=generator).item()
            y, x = ys[j].item(), xs[j].item()
        else:
            # Pad so the image border counts as background: the point stays off the border.
            dist = ndimage.distance_transform_edt(np.pad(fg.cpu().numpy(), 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        coords[i, 0] = torch.tensor([float(x), float(y)])
        labels[i, 0] = 1
    return coords.to(mask.device), labels.to(mask.device)


def adapter_keys(module: nn.Module) -> tuple[str, ...]:
    """Key prefixes of every injected adapter (allowed missing when loading SAM weights)."""
    return tuple(
        sorted(
            {k.split("adapter.")[0] + "adapter." for k in module.state_dict() if ".adapter." in k}
        )
    )


class PromptedSegmenter(nn.Module):
    """Base class of the SAM family: prompts, ``compute_loss``/``predict``, freezing, weights.

    Subclasses implement ``segment(image, points, boxes) -> logits [B, 1, H, W]`` and
    :meth:`frozen_prefixes`; they override :meth:`checkpoint_new_keys` /
    :meth:`checkpoint_unused_keys` when their module tree differs from the official checkpoint's
    beyond the adapters, and end their constructor with :meth:`load_pretrained_and_freeze`.

    Attributes:
        load_report: ``{"path", "missing", "unexpected"}`` of the last :meth:`load_checkpoint`
            (also logged at INFO level); ``None`` when no official checkpoint was loaded.
        prompt_kinds: the accepted ``prompt`` values (class attribute).
        automatic_prompts: the kinds that need no mask (class attribute; never oracle).

    Args:
        prompt: one of ``prompt_kinds`` (see the module docstring).
        prompt_source: where evaluation prompts come from when ``prompt != "none"``: ``"oracle"``
            (the ground truth passed as ``prompt_mask``) or ``"provided"`` (another network's
            prediction, passed as ``prompt_mask`` or produced by :meth:`set_prompt_provider`).
        box_jitter: training-time box perturbation, as a fraction of the box side.
    """

    prompt_kinds: tuple[str, ...] = PROMPTS
    automatic_prompts: tuple[str, ...] = ("none",)

    def __init__(self, *, prompt: str, prompt_source: str = "oracle", box_jitter: float = 0.1):
        super().__init__()
        if prompt not in self.prompt_kinds:
            raise ValueError(f"prompt '{prompt}' unknown; choose one of {self.prompt_kinds}.")
        if prompt_source not in PROMPT_SOURCES:
            raise ValueError(
                f"prompt_source '{prompt_source}' unknown; choose one of {PROMPT_SOURCES}."
            )
        if box_jitter < 0:
            raise ValueError(f"box_jitter must be >= 0, got {box_jitter}.")
        self.prompt = prompt
        self._prompt_source = prompt_source
        self.box_jitter = box_jitter
        self.prompt_provider: nn.Module | None = None
        self.load_report: dict[str, str | list[str]] | None = None

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes that stay frozen (adapters inside them still train)."""
        raise NotImplementedError(f"{type(self).__name__} must define frozen_prefixes().")

    def checkpoint_new_keys(self) -> tuple[str, ...]:
        """Prefixes of this network's keys that an official checkpoint lacks (default: adapters)."""
        return adapter_keys(self)

    def checkpoint_unused_keys(self) -> tuple[str, ...]:
        """Prefixes of official-checkpoint keys this network does not use (default: none)."""
        return ()

    def freeze(self) -> None:
        """Freeze the parameters under :meth:`frozen_prefixes` except adapters; train the rest."""
        frozen = self.frozen_prefixes()
        for name, param in self.named_parameters():
            param.requires_grad = ".adapter." in name or not name.startswith(frozen)

    def load_checkpoint(self, path: str | os.PathLike) -> tuple[list[str], list[str]]:
        """Load an official checkpoint (local file) and record the key report in ``load_report``.

        Only :meth:`checkpoint_new_keys` may be missing and :meth:`checkpoint_unused_keys`
        unexpected; anything else raises (see :func:`networks.common.load_pretrained`).

        Returns:
            ``(missing, unexpected)`` key lists.
        """
        missing, unexpected = load_pretrained(
            self,
            path,
            allowed_missing=self.checkpoint_new_keys(),
            allowed_unexpected=self.checkpoint_unused_keys(),
        )
        self.load_report = {"path": os.fspath(path), "missing": missing, "unexpected": unexpected}
        logger.info(
            "%s: loaded %s; %d model keys kept their initialisation (%s), %d file keys unused (%s)",
            type(self).__name__,
            os.fspath(path),
            len(missing),
            ", ".join(missing[:6]),
            len(unexpected),
            ", ".join(unexpected[:6]),
        )
        return missing, unexpected

    def load_pretrained_and_freeze(self, checkpoint: str | os.PathLike | None) -> None:
        """End of construction: load ``checkpoint`` when given, then :meth:`freeze`."""
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.freeze()

    @property
    def prompt_source(self) -> str:
        """``"none"`` (automatic), ``"oracle"`` (ground-truth prompts) or ``"provided"``."""
        return "none" if self.prompt in self.automatic_prompts else self._prompt_source

    @property
    def prompt_description(self) -> str:
        """Human-readable label for tables, e.g. ``"oracle prompt (box from ground truth)"``."""
        if self.prompt == "none":
            return "no prompt (automatic)"
        if self.prompt in self.automatic_prompts:
            return f"{self.prompt} prompt (automatic)"
        if self.prompt_source == "oracle":
            return f"oracle prompt ({self.prompt} from ground truth)"
        return f"provided prompt ({self.prompt} from another network's mask)"

    def set_prompt_provider(self, network: nn.Module | None) -> None:
        """Take evaluation prompts from ``network``'s prediction (``logit > 0``); ``None`` unsets.

        Also switches ``prompt_source`` to ``"provided"``.
        """
        # Stored outside the module tree: the provider is not part of this model's parameters.
        self.__dict__["prompt_provider"] = network
        if network is not None:
            self._prompt_source = "provided"

    def sample_prompts(
        self, mask: torch.Tensor | None, *, random: bool
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """Prompts ``(points, boxes)`` for ``self.prompt`` from ``mask [B, H, W]``."""
        if self.prompt in self.automatic_prompts:
            return None, None
        if mask is None:
            raise ValueError(
                f"{type(self).__name__} with prompt='{self.prompt}' needs a mask to sample the "
                "prompt from: pass prompt_mask (the ground truth for an oracle prompt, or another "
                "network's prediction), call set_prompt_provider(network), or use prompt='none'."
            )
        if mask.ndim == 4:
            mask = mask[:, 0]
        if self.prompt in ("box", "exemplar"):
            return None, boxes_from_masks(mask, jitter=self.box_jitter if random else 0.0)
        return points_from_masks(mask, random=random), None

    def segment(self, image, points, boxes) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x ``[B, 3, H, W]``; prompt_mask ``[B, H, W]`` (not for ``automatic_prompts``).

        Prompts are random in training mode and deterministic in eval mode.
        Returns logits ``[B, 1, H, W]``.
        """
        points, boxes = self.sample_prompts(prompt_mask, random=self.training)
        return self.segment(x, points, boxes)

    def compute_loss(self, batch: dict, loss_fn) -> tuple[torch.Tensor, dict[str, float]]:
        """Training step: prompts sampled from ``batch["mask"]`` (ground truth) when prompted."""
        logits = self(batch["image"], prompt_mask=batch["mask"])
        loss = loss_fn(logits, batch["mask"])
        oracle = float(self.prompt not in self.automatic_prompts)
        return loss, {"loss": float(loss.detach()), "oracle_prompt": oracle}

    @torch.no_grad()
    def predict(self, image: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation logits ``[B, 1, H, W]``; see ``prompt_source`` for where prompts come from.

        Pass the ground truth as ``prompt_mask`` for an oracle prompt, another network's binary
        mask for a provided prompt; with a prompt provider set, ``prompt_mask`` may be omitted.
        """
        automatic = self.prompt in self.automatic_prompts
        if not automatic and prompt_mask is None and self.prompt_provider is not None:
            prompt_mask = (self.prompt_provider(image)[:, 0] > 0).long()
        return self(image, prompt_mask=prompt_mask)
