"""SegDT: a diffusion transformer that generates lesion masks in a latent space with rectified flow.

Bekhouche, Maroun, Dornaika, Hadid, "SegDT: A Diffusion Transformer-Based Segmentation Model for
Medical Imaging", 2025. No code was released; this implementation follows the abstract (a small DiT,
DiT-XS, in the latent space of the tiny TAESD autoencoder, trained with rectified flow so that a few
sampling steps suffice). Every other choice is ours and listed here:

- Condition: the image latent is concatenated to the noisy mask latent along channels (no cross-
  attention); the DiT sees only the time, no class label (``networks.segdt.dit``).
- Flow: ``t = 0`` is the mask latent, ``t = 1`` unit Gaussian noise, ``z_t = (1 - t) z_mask + t
  noise``, the DiT predicts the velocity ``noise - z_mask`` with an MSE loss; training times are
  uniform or logit-normal (location 0, scale 1), clamped to ``[1e-5, 1]``; the DiT embeds ``1000 t``
  (``networks.segdt.flow``).
- Sampling: Euler from ``t = 1`` to ``t = 0`` in ``steps`` equal steps (default 4). Noise comes from
  a local ``torch.Generator`` seeded with ``seed`` (default ``sample_seed``), never the global RNG,
  so ``forward(x) == predict(x)`` and evaluation is reproducible. With ``n_samples > 1`` the logits
  of the samples are averaged and ``predict_with_uncertainty`` also returns the per-pixel variance
  of the samples' probabilities (sigmoid, or softmax for several classes).
- Latent space (``autoencoder``):

  - ``taesd``: frozen TAESD (8x, 4 channels) loaded from ``taesd_path`` (diffusers
    ``AutoencoderTiny`` layout). The binary mask is encoded as a grey image in [-1, 1] replicated to
    RGB; the decoded grey level (channel mean, about [-1, 1]) times ``logit_scale`` gives the
    logits. Binary masks and RGB only.
  - ``learned`` (default of ``segdt``, since TAESD weights cannot be downloaded here): a small mask
    autoencoder (conv pyramid with a ``tanh`` latent; 8x and 4 channels like TAESD, so a token
    covers 16x16 pixels as in the paper) trained *jointly* with the DiT by a reconstruction term
    inside ``compute_loss`` (the configured segmentation loss on the decoded logits of the slightly
    noised latent). The flow target is the *detached* mask latent, so the velocity loss cannot
    collapse the latent space; only the reconstruction trains the mask autoencoder. The image
    encoder (``segdt``: a randomly initialised timm ResNet-18 cut at stride 8, 32 channels) is
    trained by the velocity loss *and* by the condition loss: a 1x1 head maps its latent to a guess
    of the mask latent, decoded and scored with the segmentation loss. The trained space is saved
    in the SegDT checkpoint; passing that checkpoint as ``autoencoder_ckpt`` reuses it frozen in
    another run (a two-stage schedule with one Trainer).
  - ``none``: pixel space at ``1/latent_downsample`` resolution (default 2) with patch 4: image and
    mask are area-averaged, the mask mapped to [-1, 1]; decoding up-samples the latent bilinearly
    and multiplies it by ``logit_scale``.

- Estimate loss (``estimate_weight``, ours, not in the paper; on in the registered ``segdt`` and
  ``segdt_s`` with weight 1, off in the class and the other registered variants): the DiT's
  one-step estimate of the mask latent from the training forward pass, ``z_t - t v``
  (``flow.data_estimate``), is decoded with the mask decoder's weights detached and scored with
  the segmentation loss. The velocity MSE treats every latent entry alike, so on an ambiguous
  image the regression to the mean of the background-heavy latents can decode to an empty mask;
  the segmentation loss (Dice in ``bce_dice``) penalises that directly. At ``t = 1`` the
  estimate is exactly the 1-step sampler's output, so this also trains the few-step regime.
  Only the DiT and the image encoder receive its gradient; the mask autoencoder is trained by its
  reconstruction term alone.
- ``forward`` runs the sampler, so it is differentiable but its gradient is not the training
  objective; train through ``compute_loss``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from networks.common import check_input_shape
from networks.registry import NETWORKS
from networks.segdt.dit import DIT_SIZES, DiT
from networks.segdt.flow import (
    SAMPLERS,
    TIME_SAMPLINGS,
    euler_sample,
    flow_matching_loss,
    sample_time,
)
from networks.segdt.latent_spaces import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LearnedLatentSpace,
    PixelLatentSpace,
    TAESDLatentSpace,
    segmentation_loss,
)

AUTOENCODERS = ("taesd", "learned", "none")
_DEFAULT_DOWNSAMPLE = {"taesd": 8, "learned": 8, "none": 2}
_DEFAULT_PATCH = {"taesd": 2, "learned": 2, "none": 4}


class SegDT(nn.Module):
    """Latent rectified-flow diffusion transformer for segmentation.

    Args:
        in_channels: image channels.
        num_classes: mask channels (1 for binary lesion segmentation).
        autoencoder: latent space, ``taesd``, ``learned`` or ``none`` (see the module docstring).
        taesd_path: local TAESD weights (required for ``taesd``).
        autoencoder_ckpt: SegDT checkpoint whose learned latent space is reused frozen (``learned``
            only).
        latent_downsample: input side / latent side; ``None`` picks 8 (taesd, learned) or 2
            (none).
        latent_channels, cond_channels, autoencoder_width: sizes of the learned latent space.
        image_encoder: image encoder of the learned latent space, ``conv`` or a timm backbone
            name (random initialisation); ``None`` picks ``conv``.
        condition_weight: weight of the learned space's condition loss (the image encoder
            predicts the mask latent, see ``LearnedLatentSpace``); ``None`` picks 1.0, 0 turns
            it off.
        patch_size: DiT patch; ``None`` picks 2 (taesd, learned) or 4 (none).
        embed_dim, depth, num_heads, mlp_ratio: DiT size (``DIT_SIZES``).
        t_sampling: training time distribution, ``uniform`` or ``logit_normal``.
        sample_steps: default number of sampling steps for ``predict``/``forward``.
        sampler: default ODE sampler (``euler``).
        sample_seed: default seed of the sampling noise.
        logit_scale: latent/grey level -> logits factor (``taesd``, ``none``).
        recon_weight, latent_noise: reconstruction term of the learned autoencoder.
        estimate_weight: weight of the estimate loss (0, the default, switches it off): the
            segmentation loss on the decoded one-step estimate of the mask latent (see the
            module docstring).
        image_mean, image_std: normalisation of the incoming images (undone for TAESD).
        attention_backend: backend of the global-attention dispatcher.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int = 1,
        autoencoder: str = "learned",
        taesd_path: str | os.PathLike | None = None,
        autoencoder_ckpt: str | os.PathLike | None = None,
        latent_downsample: int | None = None,
        latent_channels: int = 4,
        cond_channels: int = 8,
        autoencoder_width: int = 32,
        image_encoder: str | None = None,
        condition_weight: float | None = None,
        patch_size: int | None = None,
        embed_dim: int = 256,
        depth: int = 8,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        t_sampling: str = "uniform",
        sample_steps: int = 4,
        sampler: str = "euler",
        sample_seed: int = 0,
        logit_scale: float = 4.0,
        recon_weight: float = 1.0,
        latent_noise: float = 0.1,
        estimate_weight: float = 0.0,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_choice("autoencoder", autoencoder, AUTOENCODERS)
        _check_choice("t_sampling", t_sampling, TIME_SAMPLINGS)
        _check_choice("sampler", sampler, SAMPLERS)
        if estimate_weight < 0:
            raise ValueError(
                f"estimate_weight must be >= 0 (0 switches the estimate loss off), got "
                f"{estimate_weight}."
            )
        if not isinstance(sample_steps, int) or sample_steps < 1:
            raise ValueError(f"sample_steps must be a positive integer, got {sample_steps!r}.")
        if autoencoder_ckpt is not None and autoencoder != "learned":
            raise ValueError(
                f"autoencoder_ckpt reuses a learned latent space, but autoencoder='{autoencoder}'; "
                "set autoencoder='learned' or drop autoencoder_ckpt."
            )
        for name, value in (
            ("image_encoder", image_encoder),
            ("condition_weight", condition_weight),
        ):
            if value is not None and autoencoder != "learned":
                raise ValueError(
                    f"{name} configures the learned latent space, but autoencoder="
                    f"'{autoencoder}'; set autoencoder='learned' or drop {name}."
                )
        downsample = latent_downsample or _DEFAULT_DOWNSAMPLE[autoencoder]
        if autoencoder == "taesd":
            if taesd_path is None:
                raise ValueError(
                    "autoencoder='taesd' needs taesd_path, a local TAESD state dict in the "
                    "diffusers AutoencoderTiny layout (dermseg never downloads weights); or use "
                    "autoencoder='learned' / 'none'."
                )
            if in_channels != 3 or num_classes != 1 or downsample != 8:
                raise ValueError(
                    "autoencoder='taesd' works on RGB images (in_channels=3), binary masks "
                    "(num_classes=1) and 8x latents; got in_channels="
                    f"{in_channels}, num_classes={num_classes}, latent_downsample={downsample}."
                )
            self.latent = TAESDLatentSpace(
                weights=taesd_path,
                image_mean=image_mean,
                image_std=image_std,
                logit_scale=logit_scale,
            )
        elif autoencoder == "learned":
            self.latent = LearnedLatentSpace(
                in_channels=in_channels,
                num_classes=num_classes,
                downsample=downsample,
                latent_channels=latent_channels,
                image_channels=cond_channels,
                width=autoencoder_width,
                image_encoder=image_encoder or "conv",
                condition_weight=1.0 if condition_weight is None else condition_weight,
                latent_noise=latent_noise,
                recon_weight=recon_weight,
                weights=autoencoder_ckpt,
            )
        else:
            self.latent = PixelLatentSpace(
                in_channels=in_channels,
                num_classes=num_classes,
                downsample=downsample,
                logit_scale=logit_scale,
            )
        self.autoencoder, self.num_classes = autoencoder, num_classes
        self.t_sampling, self.sampler = t_sampling, sampler
        self.sample_steps, self.sample_seed = sample_steps, sample_seed
        self.estimate_weight = estimate_weight
        self.dit = DiT(
            in_channels=self.latent.mask_channels + self.latent.image_channels,
            out_channels=self.latent.mask_channels,
            patch_size=patch_size or _DEFAULT_PATCH[autoencoder],
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            attention_backend=attention_backend,
        )
        self.divisor = self.latent.downsample * self.dit.patch_size

    def velocity(self, z_t: torch.Tensor, z_image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity ``[B, Cm, h, w]`` from ``z_t [B, Cm, h, w]``, ``z_image``, ``t [B]``."""
        return self.dit(torch.cat([z_t, z_image], dim=1), t)

    def compute_loss(
        self,
        batch: dict,
        loss_fn=None,
        *,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Rectified-flow loss (plus the learned autoencoder's reconstruction term).

        Args:
            batch: ``image`` ``[B, C, H, W]`` (normalised), ``mask`` ``long [B, H, W]``.
            loss_fn: segmentation loss of the learned autoencoder's terms and the estimate loss.
            noise: optional fixed noise ``[B, Cm, H/d, W/d]`` (tests); drawn from the global RNG
                otherwise.
            t: optional fixed times ``[B]`` in (0, 1] (tests); drawn by ``t_sampling`` otherwise.

        Returns:
            ``(loss, logs)`` with ``flow_loss`` (and ``recon_loss``, ``condition_loss``,
            ``estimate_loss`` when they are on) in ``logs``.
        """
        image, mask = batch["image"], batch["mask"]
        check_input_shape(image, self.divisor, type(self).__name__)
        z_image = self.latent.encode_image(image)
        z_mask = self.latent.encode_mask(mask)
        target = z_mask.detach()  # the velocity loss must not reshape the latent space
        if noise is None:
            noise = torch.randn_like(target)
        if t is None:
            t = sample_time(target.shape[0], schedule=self.t_sampling, device=target.device)
        flow, estimate = flow_matching_loss(
            lambda z, tt: self.velocity(z, z_image, tt), target, noise, t, return_estimate=True
        )
        aux, logs = self.latent.auxiliary_loss(z_mask, mask, loss_fn, z_image=z_image)
        total, logs = flow + aux, {"flow_loss": float(flow.detach()), **logs}
        if self.estimate_weight > 0:
            logits = self.latent.decode(estimate, tuple(mask.shape[-2:]), detach_weights=True)
            estimate_loss = segmentation_loss(loss_fn, logits, mask, self.num_classes)
            total = total + self.estimate_weight * estimate_loss
            logs["estimate_loss"] = float(estimate_loss.detach())
        return total, logs

    def sample(
        self,
        image: torch.Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        n_samples: int = 1,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Generated mask logits of every sample, ``[n_samples, B, K, H, W]``."""
        check_input_shape(image, self.divisor, type(self).__name__)
        _check_choice("sampler", sampler or self.sampler, SAMPLERS)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        z_image = self.latent.encode_image(image)
        batch, _, h, w = z_image.shape
        generator = torch.Generator(device=image.device)
        generator.manual_seed(self.sample_seed if seed is None else seed)
        noise = torch.randn(
            (n_samples * batch, self.latent.mask_channels, h, w),
            generator=generator,
            device=image.device,
            dtype=z_image.dtype,
        )  # (n*B, Cm, h, w), sample-major
        z_image = z_image.repeat(n_samples, 1, 1, 1)
        latent = euler_sample(
            lambda z, t: self.velocity(z, z_image, t), noise, steps or self.sample_steps
        )
        logits = self.latent.decode(latent, tuple(image.shape[-2:]))
        return logits.view(n_samples, batch, *logits.shape[1:])

    def predict_with_uncertainty(
        self,
        image: torch.Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        n_samples: int = 8,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean logits ``[B, K, H, W]`` and per-pixel variance of the samples' probabilities."""
        logits = self.sample(image, steps=steps, sampler=sampler, n_samples=n_samples, seed=seed)
        probs = logits.sigmoid() if self.num_classes == 1 else logits.softmax(dim=2)
        return logits.mean(dim=0), probs.var(dim=0, unbiased=False)

    def predict(
        self,
        image: torch.Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        n_samples: int = 1,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Mask logits ``[B, K, H, W]`` (mean over ``n_samples``) from ``image [B, C, H, W]``."""
        return self.sample(
            image, steps=steps, sampler=sampler, n_samples=n_samples, seed=seed
        ).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``predict(x)`` with the default steps, sampler and seed: logits ``[B, K, H, W]``."""
        return self.predict(x)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"SegDT {name}='{value}' is not supported; choose one of {choices}.")


_TINY = dict(DIT_SIZES["tiny"])
# The learned latent space of the CPU benchmark (see the module docstring for the measurements).
_LEARNED = dict(
    autoencoder="learned", image_encoder="resnet18", cond_channels=32, autoencoder_width=64
)
# The estimate loss is on for the benchmarked networks (pilot in experiments/synthetic/segdt.yaml).
NETWORKS.register("segdt", SegDT, **_LEARNED, **DIT_SIZES["dit_xs"], estimate_weight=1.0)
NETWORKS.register("segdt_s", SegDT, **_LEARNED, **DIT_SIZES["dit_s"], estimate_weight=1.0)
NETWORKS.register("segdt_taesd", SegDT, autoencoder="taesd", **DIT_SIZES["dit_xs"])
NETWORKS.register("segdt_pixel", SegDT, autoencoder="none", **DIT_SIZES["dit_xs"])
NETWORKS.register("segdt_tiny", SegDT, autoencoder="none", **_TINY)
NETWORKS.register(
    "segdt_learned_tiny",
    SegDT,
    autoencoder="learned",
    latent_downsample=4,
    autoencoder_width=16,
    cond_channels=4,
    **_TINY,
)
