"""The three hooks a run needs: checkpoints, TensorBoard, console progress."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segmentation.checkpoint import (
    link_atomically,
    remove_partial_files,
    save_checkpoint,
    unwrap,
)
from segmentation.training.trainer import Hook, Trainer


def checkpoint_due(trainer: Trainer) -> bool:
    """Whether :class:`CheckpointHook` writes a checkpoint at ``trainer.step``: every
    ``train.checkpoint_every`` steps, at the last step, and on a stop signal."""
    step, cfg = trainer.step, trainer.cfg
    return step % cfg.checkpoint_every == 0 or step == cfg.steps or bool(trainer.stop_reason)


class CheckpointHook(Hook):
    """Checkpoints every ``train.checkpoint_every`` steps, at the end and on a stop signal:
    ``checkpoints/step_<N>.pt`` (the newest ``train.keep_checkpoints`` are kept) and
    ``checkpoints/last.pt`` (a hard link to the newest; with ``keep_checkpoints: 0`` only
    ``last.pt`` remains); ``checkpoints/best.pt`` whenever the validation metric improves. Every
    file appears atomically (temp file + rename), so a kill at any moment leaves only complete
    checkpoints, and a checkpoint with non-finite weights is refused before anything is written.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / "checkpoints"

    def on_fit_start(self, trainer: Trainer) -> None:
        remove_partial_files(self.dir)

    def on_eval_end(self, trainer: Trainer, metrics: dict, improved: bool) -> None:
        if improved:
            save_checkpoint(self.dir / "best.pt", trainer.state_dict())

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if not checkpoint_due(trainer):
            return
        step = trainer.step
        path = self.dir / f"step_{step:08d}.pt"
        save_checkpoint(path, trainer.state_dict())
        link_atomically(path, self.dir / "last.pt")
        steps = sorted(self.dir.glob("step_*.pt"))
        for old in steps[: len(steps) - trainer.cfg.keep_checkpoints]:
            old.unlink()  # last.pt is a hard link (or a copy), so it survives its step file


class TensorBoardHook(Hook):
    """Scalars (loss terms, lr, grad norm, images/s), validation metrics, and an image panel of
    input, prediction contour (red) and ground-truth contour (green) on the first validation
    images."""

    def __init__(self, run_dir: str | Path, panel_images: int = 4) -> None:
        self.dir = Path(run_dir) / "tb"
        self.panel_images = panel_images
        self.writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.dir), purge_step=trainer.step + 1)

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.step % trainer.cfg.log_every == 0:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, trainer.step)
        every = trainer.cfg.image_panel_every
        if every and (trainer.step % every == 0 or trainer.step == trainer.cfg.steps):
            self.writer.add_image("val/panel", self.panel(trainer), trainer.step, dataformats="HWC")

    def on_eval_end(self, trainer: Trainer, metrics: dict, improved: bool) -> None:
        for group in ("per_image", "global"):
            for key, value in metrics.get(group, {}).items():
                if isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"val/{group}/{key}", value, trainer.step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.close()

    @torch.no_grad()
    def panel(self, trainer: Trainer) -> np.ndarray:
        """``[H, n*W, 3]`` uint8: validation images with prediction and ground-truth contours."""
        from segmentation.evaluation.evaluate import predict_logits
        from segmentation.reporting.visual import denormalize, draw_contours

        samples = [trainer.val_set[i] for i in range(min(self.panel_images, len(trainer.val_set)))]
        image = torch.stack([s["image"] for s in samples]).to(trainer.device)
        was_training = trainer.model.training
        trainer.model.eval()
        net = unwrap(trainer.model)
        if getattr(net, "prompt_source", None) == "oracle":  # as evaluate_model: ground truth
            mask = torch.stack([s["mask"] for s in samples]).to(trainer.device)
            pred = net.predict(image, prompt_mask=mask)[:, 0] > 0
        else:
            pred = predict_logits(trainer.model, image)[:, 0] > 0
        trainer.model.train(was_training)
        tiles = [
            draw_contours(
                denormalize(s["image"]),
                {(255, 0, 0): p.cpu().numpy(), (0, 255, 0): s["mask"].numpy()},
            )
            for s, p in zip(samples, pred, strict=True)
        ]
        return np.concatenate(tiles, axis=1)


class ConsoleHook(Hook):
    """A tqdm progress bar with loss and ETA, and one line per validation."""

    def __init__(self) -> None:
        self.bar = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.cfg.steps, initial=trainer.step, desc="train", dynamic_ncols=True
        )

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.bar.update(1)
        if trainer.step % trainer.cfg.log_every == 0:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")

    def on_eval_end(self, trainer: Trainer, metrics: dict, improved: bool) -> None:
        per_image = metrics["per_image"]
        mark = " (best)" if improved else ""
        self.bar.write(
            f"step {trainer.step}: val dice {per_image['dice']:.4f} iou {per_image['iou']:.4f} "
            f"thresholded-J {per_image['thresholded_jaccard']:.4f} "
            f"global dice {metrics['global']['dice']:.4f}{mark}"
        )

    def on_fit_end(self, trainer: Trainer) -> None:
        self.bar.close()  # a stop by signal is reported by run_training (RunStopped)
