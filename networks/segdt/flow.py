"""Rectified flow (flow matching on straight paths) as small pure functions.

Liu, Gong, Liu, "Flow Straight and Fast", ICLR 2023; Lipman et al., "Flow Matching for Generative
Modeling", ICLR 2023; logit-normal time sampling from Esser et al., "Scaling Rectified Flow
Transformers" (Stable Diffusion 3), ICML 2024. Convention (the one of SD3): ``t = 0`` is data, ``t =
1`` is noise, ``z_t = (1 - t) x0 + t noise``, and the network predicts the constant velocity ``dz/dt
= noise - x0``; sampling integrates from ``t = 1`` down to ``t = 0``. The functions take the
velocity as a callable ``velocity_fn(z_t, t)`` so tests can inject the exact velocity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

TIME_SAMPLINGS = ("uniform", "logit_normal")
SAMPLERS = ("euler",)

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_time(
    batch_size: int,
    *,
    schedule: str = "uniform",
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Training times ``[batch_size]`` in ``[eps, 1]``.

    ``uniform``: U(0, 1). ``logit_normal``: sigmoid of N(0, 1), which spends more samples at mid
    times where the velocity is hardest to predict (SD3's default, location 0 and scale 1). The
    lower clamp keeps ``t`` away from 0, where the exact velocity of a noisy point, ``(z_t - x0) /
    t``, is numerically unstable.
    """
    if schedule == "uniform":
        t = torch.rand(batch_size, device=device, generator=generator)
    elif schedule == "logit_normal":
        t = torch.sigmoid(torch.randn(batch_size, device=device, generator=generator))
    else:
        raise ValueError(
            f"unknown time sampling '{schedule}'; choose one of {TIME_SAMPLINGS} (t_sampling)."
        )
    return t.clamp(eps, 1.0)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t [B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``like``."""
    dtype = torch.promote_types(t.dtype, like.dtype)
    return t.to(dtype).view(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point on the straight path: ``(1 - t) x0 + t noise`` with ``t [B]``, tensors ``[B, ...]``."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``noise - x0`` (the path's constant velocity)."""
    return noise - x0


def flow_matching_loss(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    *,
    return_estimate: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error between ``velocity_fn(z_t, t)`` and ``noise - x0`` (scalar).

    With ``return_estimate`` also returns ``data_estimate(z_t, prediction, t)``, the network's
    one-step guess of ``x0`` from the same forward pass.
    """
    z_t = interpolate(x0, noise, t)
    prediction = velocity_fn(z_t, t)
    loss = F.mse_loss(prediction, velocity_target(x0, noise))
    return (loss, data_estimate(z_t, prediction, t)) if return_estimate else loss


def data_estimate(z_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One Euler step from ``t`` to 0: ``z_t - t velocity`` (``x0`` when the velocity is exact).

    At ``t = 1`` this is exactly what a 1-step sampler returns from the noise ``z_1``.
    """
    return z_t - _expand(t, z_t) * velocity


def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate ``dz/dt = velocity_fn(z, t)`` from ``t = 1`` (``noise``) to ``t = 0`` in equal
    steps.

    Args:
        velocity_fn: ``(z [B, ...], t [B]) -> velocity [B, ...]``.
        noise: the starting point ``[B, ...]``.
        steps: number of Euler steps (``>= 1``); with the exact velocity of a straight path every
            ``steps`` lands exactly on its end point.

    Returns:
        The estimate of ``x0``, shaped like ``noise``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}; use e.g. steps=4.")
    z = noise
    for i in range(steps):
        t, t_next = 1.0 - i / steps, 1.0 - (i + 1) / steps
        t_batch = torch.full((z.shape[0],), t, device=z.device, dtype=z.dtype)
        z = z + (t_next - t) * velocity_fn(z, t_batch)
    return z
