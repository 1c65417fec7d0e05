"""Latent spaces in which a diffusion segmenter generates masks (used by ``networks.segdt.model``).

Each space maps the ImageNet-normalised image to a conditioning latent, the mask to the target
latent, and a generated latent back to mask logits at the input size:

- ``TAESDLatentSpace``: the frozen TAESD autoencoder (8x, 4 channels) for both image and mask, the
  SegDT paper's choice (Bekhouche et al. 2025). Needs the weights as a local file.
- ``LearnedLatentSpace``: a small mask autoencoder and an image encoder trained from scratch, the
  image encoder with its own loss from step 0 (the condition loss).
- ``PixelLatentSpace``: no autoencoder; area-down-sampled pixels, the mask mapped to [-1, 1].
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from networks.blocks.conv import DoubleConv
from networks.common import load_pretrained
from networks.segdt.taesd import TAESD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mask_to_signed(mask: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """``long [B, H, W]`` -> float ``[B, max(1, K), H, W]`` in {-1, 1} (lesion or one-hot)."""
    if num_classes == 1:
        onehot = (mask > 0).unsqueeze(1)
    else:
        onehot = F.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2)
    return onehot.to(dtype) * 2 - 1


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size, mode="bilinear")


class LatentSpace(nn.Module):
    """Interface. Attributes: ``downsample`` (input side / latent side), ``mask_channels``,
    ``image_channels`` (channels of the two latents)."""

    downsample: int
    mask_channels: int
    image_channels: int

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` normalised image -> ``[B, image_channels, H/d, W/d]``."""
        raise NotImplementedError

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``long [B, H, W]`` -> ``[B, mask_channels, H/d, W/d]``."""
        raise NotImplementedError

    def decode(
        self, latent: torch.Tensor, size: tuple[int, int], *, detach_weights: bool = False
    ) -> torch.Tensor:
        """``[B, mask_channels, h, w]`` -> logits ``[B, K, *size]``.

        ``detach_weights``: the gradient reaches ``latent`` but not the decoder's weights (a loss
        on generated latents must not reshape the mask decoder). Spaces whose decoder is fixed
        ignore it.
        """
        raise NotImplementedError

    def auxiliary_loss(
        self, z_mask, mask, loss_fn, z_image=None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Extra training terms (reconstruction, condition loss); zero for fixed spaces."""
        return z_mask.new_zeros(()), {}


class PixelLatentSpace(LatentSpace):
    """No autoencoder: the latent is the image/mask area-averaged by ``downsample``.

    Decoding up-samples the latent bilinearly; logits are ``logit_scale * latent`` (the latent is in
    about [-1, 1], so 0 is the 0.5-probability boundary).
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, downsample: int, logit_scale: float
    ) -> None:
        super().__init__()
        self.downsample, self.num_classes, self.logit_scale = downsample, num_classes, logit_scale
        self.mask_channels, self.image_channels = num_classes, in_channels

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.downsample) if self.downsample > 1 else x

    def encode_image(self, image):
        return self._pool(image)

    def encode_mask(self, mask):
        return self._pool(mask_to_signed(mask, self.num_classes))

    def decode(self, latent, size, *, detach_weights=False):
        return _resize(latent, size) * self.logit_scale


class TAESDLatentSpace(LatentSpace):
    """Frozen TAESD for image and mask (binary masks only: the mask is encoded as a grey image).

    Args:
        weights: local diffusers-layout TAESD file (see ``networks.segdt.taesd``).
        image_mean, image_std: the normalisation of incoming images, undone before TAESD's [-1, 1].
        logit_scale: decoded grey level in [-1, 1] (mean of the 3 channels) times this gives logits.
        latent_scale: multiplies TAESD latents (1.0: TAESD latents are already about unit scale).
    """

    def __init__(
        self,
        *,
        weights: str | os.PathLike,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        logit_scale: float = 4.0,
        latent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.taesd = TAESD(weights=weights, freeze=True)
        self.downsample, self.mask_channels, self.image_channels = 8, 4, 4
        self.logit_scale, self.latent_scale = logit_scale, latent_scale
        self.register_buffer("mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    def encode_image(self, image):
        return self.taesd.encode((image * self.std + self.mean) * 2 - 1) * self.latent_scale

    def encode_mask(self, mask):
        signed = mask_to_signed(mask, 1, self.taesd.encoder.layers[0].weight.dtype)
        return self.taesd.encode(signed.expand(-1, 3, -1, -1)) * self.latent_scale

    def decode(self, latent, size, *, detach_weights=False):  # TAESD is frozen
        grey = self.taesd.decode(latent / self.latent_scale).mean(dim=1, keepdim=True)
        return _resize(grey, size) * self.logit_scale


def _conv_stack(in_ch: int, out_ch: int, widths: list[int], *, up: bool) -> nn.Sequential:
    """A 3x3 conv + SiLU to ``widths[0]``, then per further width one stride-2 conv (encoder) or
    nearest up-sampling + conv (decoder) and a second 3x3 conv, each with SiLU; a 1x1 conv out."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, widths[0], 3, padding=1), nn.SiLU()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        resample = (
            [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
            if up
            else [nn.Conv2d(a, b, 3, stride=2, padding=1)]
        )
        layers += [*resample, nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU()]
    layers.append(nn.Conv2d(widths[-1], out_ch, 1))
    return nn.Sequential(*layers)


def _pyramid(width: int, stages: int) -> list[int]:
    """Widths from the input resolution to the latent: ``width`` at the latent, halved per 2x of
    resolution (at least 8), so every level costs about the same."""
    return [max(8, width >> (stages - i)) for i in range(stages + 1)]


def _unet_encoder(in_ch: int, out_ch: int, widths: list[int]) -> nn.Sequential:
    """The U-Net encoder (``DoubleConv`` with BatchNorm, max-pooling between levels) to the last
    of ``widths``, then a 1x1 conv to ``out_ch``."""
    layers: list[nn.Module] = [DoubleConv(in_ch, widths[0])]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.MaxPool2d(2), DoubleConv(a, b)]
    layers.append(nn.Conv2d(widths[-1], out_ch, 1))
    return nn.Sequential(*layers)


class TimmImageEncoder(nn.Module):
    """The stride-``downsample`` features of a timm backbone, randomly initialised (dermseg never
    downloads weights), projected to ``out_channels`` by a 1x1 conv.

    Args:
        name: a timm model with ``features_only`` support, e.g. ``resnet18``.
        in_channels: image channels.
        out_channels: conditioning latent channels.
        downsample: the feature stride to take (must be one of the backbone's reductions).
    """

    def __init__(self, name: str, *, in_channels: int, out_channels: int, downsample: int) -> None:
        super().__init__()
        import timm

        probe = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_channels)
        reductions = probe.feature_info.reduction()
        if downsample not in reductions:
            raise ValueError(
                f"image_encoder='{name}' has feature strides {reductions}, none equal to "
                f"latent_downsample={downsample}; pick a latent_downsample from that list or "
                "image_encoder='conv'."
            )
        index = reductions.index(downsample)
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=(index,), in_chans=in_channels
        )  # truncated after the stage it returns, so every parameter is used
        self.proj = nn.Conv2d(self.body.feature_info.channels()[-1], out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, out_channels, H/d, W/d]``."""
        return self.proj(self.body(image)[-1])


class LearnedLatentSpace(LatentSpace):
    """A small learned mask autoencoder plus an image encoder that predicts the mask latent.

    The mask encoder ends in ``tanh`` so the target latent lives in [-1, 1] (the scale of the unit
    noise); the mask decoder returns logits and is trained with the configured segmentation loss
    on ``z_mask + latent_noise * N(0, 1)`` so it tolerates imperfect generated latents. The
    encoders and decoder are pyramids: ``width`` channels at the latent, halved per 2x of
    resolution.

    The image encoder (``image_encoder``: ``conv``, a U-Net encoder with the same widths, or a
    timm backbone name)
    gives the conditioning latent ``z_image``. With ``condition_weight > 0`` a 1x1 head maps
    ``z_image`` to a guess of the mask latent, decoded by the mask decoder and trained with the
    segmentation loss (the *condition loss*). This gives the image encoder a gradient from step 0,
    when adaLN-Zero still zeroes the DiT output and the velocity loss cannot reach it, and makes
    ``z_image`` informative before the DiT learns to read it; without it the DiT learns to denoise
    the mask latent from ``z_t`` alone and ignores the image (see ``networks.segdt.model``).

    Args:
        in_channels, num_classes: image channels and mask classes.
        downsample: power of two; latent side = input side / downsample.
        latent_channels: mask latent channels.
        image_channels: conditioning latent channels.
        width: channels at the latent level of the mask autoencoder (and the ``conv`` image
            encoder).
        image_encoder: ``conv`` or the name of a timm backbone (random initialisation).
        condition_weight: weight of the condition loss (0 switches it off).
        latent_noise: std of the noise added to the mask latent before decoding in training.
        recon_weight: weight of the reconstruction term.
        weights: a SegDT checkpoint (or state dict) whose ``latent.*`` entries initialise this
            space; the mask encoder/decoder are then frozen (stage 2), the image encoder (and its
            condition loss) stays trainable.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        downsample: int = 4,
        latent_channels: int = 4,
        image_channels: int = 8,
        width: int = 32,
        image_encoder: str = "conv",
        condition_weight: float = 1.0,
        latent_noise: float = 0.1,
        recon_weight: float = 1.0,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(
                f"learned autoencoder downsample must be a power of two, got {downsample}; "
                "use 2, 4 or 8."
            )
        if condition_weight < 0:
            raise ValueError(
                f"condition_weight must be >= 0 (0 switches the condition loss off), got "
                f"{condition_weight}."
            )
        stages = int(math.log2(downsample))
        widths = _pyramid(width, stages)
        self.downsample, self.num_classes = downsample, num_classes
        self.mask_channels, self.image_channels = latent_channels, image_channels
        self.latent_noise, self.recon_weight = latent_noise, recon_weight
        self.condition_weight = condition_weight
        self.mask_encoder = _conv_stack(num_classes, latent_channels, widths, up=False)
        self.mask_decoder = _conv_stack(latent_channels, num_classes, widths[::-1], up=True)
        if image_encoder == "conv":
            self.image_encoder = _unet_encoder(in_channels, image_channels, widths)
        else:
            self.image_encoder = TimmImageEncoder(
                image_encoder,
                in_channels=in_channels,
                out_channels=image_channels,
                downsample=downsample,
            )
        self.condition_head = (
            nn.Conv2d(image_channels, latent_channels, 1) if condition_weight > 0 else None
        )
        self.frozen = weights is not None
        if weights is not None:
            load_pretrained(self, weights, key_map=_latent_entries)
            self.mask_encoder.requires_grad_(False)
            self.mask_decoder.requires_grad_(False)

    def encode_image(self, image):
        return self.image_encoder(image)

    def encode_mask(self, mask):
        signed = mask_to_signed(mask, self.num_classes, self.mask_encoder[0].weight.dtype)
        return torch.tanh(self.mask_encoder(signed))

    def decode(self, latent, size, *, detach_weights=False):
        if not detach_weights:
            return _resize(self.mask_decoder(latent), size)
        weights = {name: p.detach() for name, p in self.mask_decoder.named_parameters()}
        logits = torch.func.functional_call(self.mask_decoder, weights, (latent,))
        return _resize(logits, size)

    def guess(self, z_image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[B, K, *size]`` of the condition head's mask-latent guess (no sampling)."""
        if self.condition_head is None:
            raise RuntimeError("this SegDT has no condition head (condition_weight=0).")
        return self.decode(self.condition_head(z_image), size)

    def auxiliary_loss(self, z_mask, mask, loss_fn, z_image=None):
        size = tuple(mask.shape[-2:])
        total, logs = z_mask.new_zeros(()), {}
        if not self.frozen:
            noisy = z_mask + self.latent_noise * torch.randn_like(z_mask)
            recon = segmentation_loss(loss_fn, self.decode(noisy, size), mask, self.num_classes)
            total = total + self.recon_weight * recon
            logs["recon_loss"] = float(recon.detach())
        if self.condition_head is not None and z_image is not None:
            condition = segmentation_loss(
                loss_fn, self.guess(z_image, size), mask, self.num_classes
            )
            total = total + self.condition_weight * condition
            logs["condition_loss"] = float(condition.detach())
        return total, logs


def segmentation_loss(loss_fn, logits: torch.Tensor, mask: torch.Tensor, num_classes: int):
    """The configured loss, or without one the plain likelihood (BCE / cross-entropy)."""
    if loss_fn is not None:
        return loss_fn(logits, mask)
    if num_classes == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], (mask > 0).float())
    return F.cross_entropy(logits, mask.long())


def _latent_entries(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep a SegDT state dict's ``latent.*`` entries, without the prefix."""
    picked = {k[len("latent.") :]: v for k, v in state.items() if k.startswith("latent.")}
    if not picked:
        raise RuntimeError(
            "autoencoder_ckpt holds no 'latent.*' weights; pass the checkpoint of a SegDT run with "
            f"autoencoder='learned' (first keys found: {list(state)[:5]})."
        )
    return picked
