"""TAESD: tiny distilled autoencoder of Stable Diffusion's latent space (8x smaller, 4 channels).

Ollin Boer Bohan, "TAESD: Tiny AutoEncoder for Stable Diffusion", github.com/madebyollin/taesd
(2023). The module names follow the diffusers ``AutoencoderTiny`` layout (``encoder.layers.<i>...``
and ``decoder.layers.<i>...``; ``models/autoencoders/vae.py`` ``EncoderTiny``/``DecoderTiny``), so a
diffusers state dict (``diffusion_pytorch_model.safetensors`` converted to ``.pth``, or a
``torch.save`` of ``AutoencoderTiny.state_dict()``) loads without a key map. Conventions, also those
of diffusers: the encoder takes images in [-1, 1] and returns raw latents; the decoder soft-clamps
latents to (-3, 3) with ``3 tanh(z / 3)`` and returns images in [-1, 1]. Default sizes (64 channels,
1-3-3-3 encoder and 3-3-3-1 decoder blocks) give 1,222,532 + 1,222,531 = 2,445,063 parameters.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from networks.common import load_pretrained


class TinyAutoencoderBlock(nn.Module):
    """Three 3x3 convs with ReLUs, a residual (1x1 conv if widths differ), a ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # Indices 0/2/4 of this Sequential are part of the diffusers key layout.
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TAESDEncoder(nn.Module):
    """Image ``[B, 3, H, W]`` in [-1, 1] -> raw latent ``[B, latent_channels, H/8, W/8]``.

    Stage 0 is a 3x3 stem conv, every later stage a bias-free stride-2 conv; each is followed by
    ``num_blocks[i]`` ``TinyAutoencoderBlock``\\ s; a 3x3 conv maps to the latent channels.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        num_blocks: tuple[int, ...] = (1, 3, 3, 3),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (width, count) in enumerate(zip(block_out_channels, num_blocks, strict=True)):
            if i == 0:
                layers.append(nn.Conv2d(in_channels, width, 3, padding=1))
            else:
                layers.append(nn.Conv2d(block_out_channels[i - 1], width, 3, 2, 1, bias=False))
            layers.extend(TinyAutoencoderBlock(width, width) for _ in range(count))
        layers.append(nn.Conv2d(block_out_channels[-1], latent_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TAESD itself was trained on [0, 1] images.
        return self.layers(x.add(1).div(2))


class TAESDDecoder(nn.Module):
    """Raw latent ``[B, latent_channels, h, w]`` -> image ``[B, 3, 8h, 8w]`` in about [-1, 1].

    A 3x3 conv and ReLU, then per stage ``num_blocks[i]`` blocks, a nearest 2x up-sampling (all but
    the last stage) and a 3x3 conv (bias-free except the last, which maps to the output channels).
    """

    def __init__(
        self,
        *,
        out_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        num_blocks: tuple[int, ...] = (3, 3, 3, 1),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(latent_channels, block_out_channels[0], 3, padding=1),
            nn.ReLU(),
        ]
        last = len(num_blocks) - 1
        for i, (width, count) in enumerate(zip(block_out_channels, num_blocks, strict=True)):
            layers.extend(TinyAutoencoderBlock(width, width) for _ in range(count))
            if i != last:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            conv_out = out_channels if i == last else block_out_channels[i + 1]
            layers.append(nn.Conv2d(width, conv_out, 3, padding=1, bias=i == last))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Soft clamp of the latent to (-3, 3), as TAESD was trained with it.
        return self.layers(torch.tanh(z / 3) * 3).mul(2).sub(1)


class TAESD(nn.Module):
    """TAESD encoder and decoder, optionally loaded from a local diffusers-layout file and frozen.

    Args:
        weights: local path to a state dict in the diffusers ``AutoencoderTiny`` key layout
            (``encoder.layers.*``, ``decoder.layers.*``); ``None`` keeps the random initialisation.
        freeze: disable gradients and keep the module in eval mode.
        latent_channels: 4 for TAESD (SD 1.x/2.x, SDXL), 16 for TAESD3/TAEF1.

    Raises:
        ValueError: ``weights`` is a ``.safetensors`` file (convert it first, see the message).
        FileNotFoundError, RuntimeError: from ``load_pretrained`` (missing file, other key layout,
            shape mismatch).
    """

    downsample = 8

    def __init__(
        self,
        *,
        weights: str | os.PathLike | None = None,
        freeze: bool = True,
        latent_channels: int = 4,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.encoder = TAESDEncoder(latent_channels=latent_channels)
        self.decoder = TAESDDecoder(latent_channels=latent_channels)
        if weights is not None:
            if os.fspath(weights).endswith(".safetensors"):
                raise ValueError(
                    f"TAESD weights '{weights}' are a .safetensors file; dermseg loads torch "
                    'files. Convert once with: python -c "import torch, safetensors.torch as s; '
                    f"torch.save(s.load_file('{weights}'), 'taesd.pth')\" and pass taesd.pth."
                )
            load_pretrained(self, weights)
        self.frozen = freeze
        if freeze:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> TAESD:
        # A frozen autoencoder stays in eval mode whatever the surrounding model does.
        return super().train(mode and not self.frozen)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Args: image ``[B, 3, H, W]`` in [-1, 1]. Returns ``[B, latent_channels, H/8, W/8]``."""
        return self.encoder(image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Args: latent ``[B, latent_channels, h, w]``. Returns ``[B, 3, 8h, 8w]`` ~[-1, 1]."""
        return self.decoder(latent)
