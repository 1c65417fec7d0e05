"""Robustness evaluation: common corruptions and adversarial perturbations.

``tools/evaluate.py --robustness corruptions,adversarial`` runs both and stores the results under
``"robustness"`` in ``metrics.json`` with markdown tables (:func:`robustness_tables`) and a
degradation plot (:func:`degradation_plot`).

Corruptions (``segmentation.evaluation.corruptions``): each corruption at severities 1-5;
per-corruption Dice (per-image mean), its mean over severities, and that mean relative to the
clean Dice; the summary is the mean over corruptions of both (relative Dice = corrupted / clean,
1 = no loss).

Adversarial (Paschali et al., "Generalizability vs. Robustness: Adversarial Examples for Medical
Imaging", MICCAI 2018): FGSM (Goodfellow et al., ICLR 2015) and PGD (Madry et al., ICLR 2018; 10
steps of ``2.5 eps / 10``, uniform random start) with L-infinity budgets ``eps`` in {1, 2, 4, 8}/255
in *pixel* space: the ImageNet normalisation is undone, the [0, 1] RGB image is perturbed and
clipped, and renormalised before the network. The attacked loss is the Dice + BCE loss
(``bce_dice``) against the ground truth. Networks with ``compute_loss`` (generative or prompted:
SegDT, SAM adapters) are attacked through their training loss with that loss function, and
evaluated through ``predict``; the result records which (``"attacked_through"``). A stochastic
training loss (a diffusion loss samples timesteps and noise) gives a noisier gradient, so those
numbers are an upper bound on robustness. Random sign noise of the same L-infinity norm is the
baseline. Extra input channels (wavelet, LBP) are held at their clean values: only RGB is
perturbed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from segmentation.checkpoint import unwrap
from segmentation.data.loader import eval_loader
from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segmentation.evaluation.corruptions import CORRUPTIONS, SEVERITIES, CorruptedDataset
from segmentation.evaluation.evaluate import evaluate_model, predict_logits
from segmentation.evaluation.metrics import SegmentationMetrics
from segmentation.reporting.tables import format_table

__all__ = [
    "EPSILONS",
    "attack",
    "degradation_plot",
    "evaluate_adversarial",
    "evaluate_corruptions",
    "parse_kinds",
    "robustness_tables",
]

EPSILONS = (1, 2, 4, 8)  # in 1/255 units
ATTACKS = ("noise", "fgsm", "pgd")
KINDS = ("corruptions", "adversarial")


def parse_kinds(text: str | None) -> list[str]:
    """``"corruptions,adversarial"`` -> validated list (``None`` -> ``[]``)."""
    kinds = [k.strip() for k in (text or "").split(",") if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(
                f"unknown robustness evaluation '{kind}'; choose from {', '.join(KINDS)} "
                "(comma-separated)."
            )
    return kinds


def evaluate_corruptions(
    model: nn.Module,
    dataset,
    *,
    device: torch.device,
    eval_config,
    image_size: int | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    max_images: int | None = None,
    collate_fn=None,
) -> dict:
    """Dice under every corruption and severity (see the module docstring).

    Args:
        model: the network.
        dataset: an evaluation split with ``load``/``transform``/``ids``.
        device, eval_config, collate_fn: as for
            :func:`~segmentation.evaluation.evaluate.evaluate_model`.
        image_size: working resolution (data section ``image_size``).
        corruptions: names (default: all registered).
        severities: subset of 1-5.
        seed: corruption seed.
        max_images: evaluate the first ``max_images`` images only.

    Returns:
        ``{"clean_dice", "corruptions": {name: {"dice": [one per severity], "mean", "relative"}},
        "mean_dice", "mean_relative", "severities", "seed", "n_images", "definition"}``.
    """
    names = list(corruptions) if corruptions is not None else CORRUPTIONS.names()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))

    def dice(corruption, severity=1) -> float:
        split = CorruptedDataset(
            dataset, corruption, severity, seed=seed, image_size=image_size, indices=range(n)
        )
        metrics, _ = evaluate_model(
            model,
            split,
            device=device,
            eval_config=eval_config,
            boundary=False,
            collate_fn=collate_fn,
        )
        return float(metrics["per_image"]["dice"])

    clean = dice(None)
    table = {}
    for name in names:
        values = [dice(name, int(s)) for s in severities]
        mean = float(np.mean(values))
        table[name] = {"dice": values, "mean": mean, "relative": mean / clean if clean else np.nan}
    return {
        "clean_dice": clean,
        "corruptions": table,
        "mean_dice": float(np.mean([v["mean"] for v in table.values()])),
        "mean_relative": float(np.mean([v["relative"] for v in table.values()])),
        "severities": [int(s) for s in severities],
        "seed": seed,
        "n_images": n,
        "definition": "per-image mean Dice; relative = mean over severities / clean Dice",
    }


def _pixel_bounds(device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def _loss(model: nn.Module, image: torch.Tensor, batch: dict, loss_fn) -> torch.Tensor:
    net = unwrap(model)
    if hasattr(net, "compute_loss"):
        loss, _ = net.compute_loss({**batch, "image": image}, loss_fn)
        return loss
    return loss_fn(model(image), batch["mask"])


def attack(
    model: nn.Module,
    batch: dict,
    *,
    method: str,
    eps: float,
    loss_fn: nn.Module,
    steps: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Perturb ``batch["image"]`` (ImageNet-normalised ``[B, C, H, W]``) within an L-inf ball.

    Args:
        model: the network (its parameters are not updated).
        batch: ``image`` and ``mask`` on the model's device (plus ``id``/``meta`` for
            ``compute_loss``).
        method: ``"noise"`` (random +-eps signs), ``"fgsm"`` or ``"pgd"``.
        eps: L-inf radius in [0, 1] pixel units (e.g. ``4 / 255``).
        loss_fn: the loss to increase (``bce_dice``).
        steps: PGD iterations (step size ``2.5 eps / steps``).
        generator: random source of the noise baseline and the PGD start (CPU generator).

    Returns:
        The perturbed image, normalised like the input ``[B, C, H, W]`` (channels beyond RGB are
        copied).
    """
    if method not in ATTACKS:
        raise ValueError(f"unknown attack '{method}'; choose one of {', '.join(ATTACKS)}.")
    image = batch["image"]
    mean, std = _pixel_bounds(image.device)
    pixels = (image[:, :3] * std + mean).clamp(0, 1).detach()  # (B, 3, H, W) in [0, 1]
    extra = image[:, 3:].detach()

    def normalised(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - mean) / std, extra], dim=1)

    def rand_like(x: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape, generator=generator).to(x.device)

    if method == "noise":
        signs = torch.where(rand_like(pixels) < 0.5, -1.0, 1.0)
        return normalised((pixels + eps * signs).clamp(0, 1))

    def grad_sign(x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = _loss(model, normalised(x), batch, loss_fn)
            (grad,) = torch.autograd.grad(loss, x)
        return grad.sign()

    if method == "fgsm":
        return normalised((pixels + eps * grad_sign(pixels)).clamp(0, 1))
    step = 2.5 * eps / steps
    x = (pixels + eps * (2 * rand_like(pixels) - 1)).clamp(0, 1)
    for _ in range(steps):
        x = x + step * grad_sign(x)
        x = torch.min(torch.max(x, pixels - eps), pixels + eps).clamp(0, 1)
    return normalised(x.detach())


def evaluate_adversarial(
    model: nn.Module,
    dataset,
    *,
    device: torch.device,
    eval_config,
    loss_fn: nn.Module,
    epsilons: Sequence[int] = EPSILONS,
    methods: Sequence[str] = ATTACKS,
    pgd_steps: int = 10,
    seed: int = 0,
    max_images: int | None = None,
    collate_fn=None,
) -> dict:
    """Dice under FGSM / PGD / same-norm noise at each ``eps`` (in 1/255 units).

    Returns:
        ``{"clean_dice", "attacks": {"noise" | "fgsm" | "pgd10": {"1/255": dice, ...}},
        "attacked_through", "loss", "epsilons", "pgd_steps", "seed", "n_images", "note"}``.
    """
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    generator = torch.Generator().manual_seed(seed)
    label = {m: (f"pgd{pgd_steps}" if m == "pgd" else m) for m in methods}
    meters = {(m, e): _meter(eval_config) for m in methods for e in epsilons}
    clean = _meter(eval_config)
    loader = eval_loader(subset, batch_size=eval_config.batch_size, collate_fn=collate_fn)
    for batch in loader:
        batch = {**batch, "image": batch["image"].to(device), "mask": batch["mask"].to(device)}
        with torch.no_grad():
            clean.update(predict_logits(model, batch["image"]).float().cpu(), batch["mask"].cpu())
        for m in methods:
            for e in epsilons:
                adv = attack(
                    model,
                    batch,
                    method=m,
                    eps=e / 255.0,
                    loss_fn=loss_fn,
                    steps=pgd_steps,
                    generator=generator,
                )
                with torch.no_grad():
                    logits = predict_logits(model, adv).float().cpu()
                meters[m, e].update(logits, batch["mask"].cpu())
    model.train(was_training)
    through = "compute_loss" if hasattr(unwrap(model), "compute_loss") else "forward"
    return {
        "clean_dice": _dice(clean),
        "attacks": {label[m]: {f"{e}/255": _dice(meters[m, e]) for e in epsilons} for m in methods},
        "attacked_through": through,
        "loss": type(loss_fn).__name__,
        "epsilons": [f"{e}/255" for e in epsilons],
        "pgd_steps": pgd_steps,
        "seed": seed,
        "n_images": n,
        "note": (
            "L-inf perturbation of RGB in [0, 1] pixel space, renormalised; per-image mean Dice"
            + (
                "; attacked through the network's training loss (compute_loss), evaluated "
                "through predict"
                if through == "compute_loss"
                else ""
            )
        ),
    }


def _meter(eval_config) -> SegmentationMetrics:
    return SegmentationMetrics(empty=eval_config.empty, boundary=False)


def _dice(meter: SegmentationMetrics) -> float:
    return float(meter.compute()["per_image"]["dice"])


def robustness_tables(result: dict, floatfmt: str = ".4f") -> str:
    """Markdown tables for the ``"robustness"`` entry of ``metrics.json``."""
    parts = []
    if "corruptions" in result:
        c = result["corruptions"]
        sev = c["severities"]
        rows = [
            (name, *v["dice"], v["mean"], v["relative"]) for name, v in c["corruptions"].items()
        ]
        rows.append(("mean over corruptions", *[""] * len(sev), c["mean_dice"], c["mean_relative"]))
        headers = ("corruption", *[f"s{s}" for s in sev], "mean Dice", "relative to clean")
        parts.append(
            f"Corruptions (per-image mean Dice, {c['n_images']} images, clean "
            f"{c['clean_dice']:{floatfmt}}, seed {c['seed']}):\n\n"
            + format_table(headers, rows, floatfmt)
        )
    if "adversarial" in result:
        a = result["adversarial"]
        rows = [(name, *v.values()) for name, v in a["attacks"].items()]
        parts.append(
            f"Adversarial (per-image mean Dice, {a['n_images']} images, clean "
            f"{a['clean_dice']:{floatfmt}}, L-inf eps in pixel space, attacked through "
            f"{a['attacked_through']}):\n\n"
            + format_table(("attack", *a["epsilons"]), rows, floatfmt)
        )
    return "\n\n".join(parts)


def degradation_plot(result: dict, path) -> None:
    """Save Dice vs severity (corruptions) and Dice vs eps (attacks) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("corruptions", "adversarial") if k in result]
    if not panels:
        raise ValueError("degradation_plot needs a 'corruptions' or 'adversarial' result.")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        r = result[key]
        if key == "corruptions":
            x = [0, *r["severities"]]
            for name, v in r["corruptions"].items():
                ax.plot(x, [r["clean_dice"], *v["dice"]], marker="o", label=name)
            ax.set_xlabel("severity (0 = clean)")
        else:
            x = [0, *[int(e.split("/")[0]) for e in r["epsilons"]]]
            for name, v in r["attacks"].items():
                ax.plot(x, [r["clean_dice"], *v.values()], marker="o", label=name)
            ax.set_xlabel("L-inf eps (x 1/255)")
        ax.set_ylabel("Dice (per-image mean)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
