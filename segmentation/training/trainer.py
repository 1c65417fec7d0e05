"""The one training loop: iteration-based, resumable, with hooks (nanoGPT-short,
nnU-Net-structured).

``fit()`` runs steps ``self.step .. train.steps - 1``; each step is ``train_step`` (autocast where
it helps -> loss, or ``model.compute_loss`` for networks whose objective is not "logits -> loss"
-> backward -> clip -> optimizer -> schedule). Validation runs every ``eval_every`` steps on the
validation split only and selects ``best.pt`` by a named per-image metric (computing HD95/ASSD
when that metric needs them). Hooks (TensorBoard, checkpoints, console) observe the loop.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from networks.common import count_parameters
from segmentation.checkpoint import (
    clean_state_dict,
    load_weights,
    rng_state,
    set_rng_state,
    unwrap,
)
from segmentation.config import Config
from segmentation.data.loader import train_loader
from segmentation.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    StopRequest,
    all_reduce_flag,
    broadcast_buffers,
)
from segmentation.errors import CheckpointError, NonFiniteError
from segmentation.evaluation.evaluate import evaluate_model
from segmentation.evaluation.metrics import higher_is_better, metric_value


class Hook:
    """Base class: every callback is a no-op until a subclass overrides it.

    ``on_fit_end`` also runs when training fails (it closes files and progress bars); check
    ``trainer.step`` against ``trainer.cfg.steps`` to tell a finished run.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        pass

    def on_eval_end(self, trainer: Trainer, metrics: dict, improved: bool) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class TrainingObjective(nn.Module):
    """Network + loss as one module, so DDP sees every training forward (``compute_loss`` included).

    ``forward(batch) -> (loss, logs)``: ``network.compute_loss(batch, loss_fn)`` when the network
    defines it (generative, prompted), else ``loss_fn(network(image), mask)``.
    """

    def __init__(self, network: nn.Module, loss_fn: nn.Module) -> None:
        super().__init__()
        self.network, self.loss_fn = network, loss_fn

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        bare = unwrap(self.network)
        if hasattr(bare, "compute_loss"):
            return bare.compute_loss(batch, self.loss_fn)
        loss = self.loss_fn(self.network(batch["image"]), batch["mask"])
        return loss, {f"loss_{k}": v for k, v in getattr(self.loss_fn, "terms", {}).items()}


class Trainer:
    """Trains one network on one dataset (one process of a DDP job, or alone).

    Args:
        model: the network (already on ``device``; possibly compiled; not DDP-wrapped).
        loss_fn: ``(logits [B,K,H,W], mask long [B,H,W]) -> scalar``.
        optimizer, scheduler: built from the config (``scheduler`` is stepped once per training
            step, or on validation for ``ReduceLROnPlateau``).
        train_set, val_set: datasets of the training and *validation* splits.
        config: the validated experiment config (saved inside every checkpoint).
        spec: ``{"name", "kwargs"}`` that rebuilds the network (saved inside every checkpoint).
        device: where to train.
        hooks: observers called in order (give them to the main process only).
        collate_fn: batch collation for the dataset's sample dicts.
        dist_info: this process's rank and the world size (:mod:`segmentation.distributed`).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        train_set,
        val_set,
        config: Config,
        spec: dict,
        device: torch.device,
        hooks: list[Hook] = (),
        collate_fn=None,
        dist_info: DistInfo = SINGLE_PROCESS,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_set, self.val_set = train_set, val_set
        self.config, self.cfg, self.spec = config, config.train, spec
        self.device, self.hooks, self.collate_fn = device, list(hooks), collate_fn
        self.dist = dist_info
        self.objective = TrainingObjective(model, loss_fn)
        if dist_info.enabled:
            ids = [dist_info.local_rank] if device.type == "cuda" else None
            self.objective = DistributedDataParallel(self.objective, device_ids=ids)
        self.step = 0
        sign = 1.0 if higher_is_better(config.eval.metric) else -1.0
        self.best = {"metric": config.eval.metric, "value": -sign * math.inf, "step": -1}
        self.last_metrics: dict = {}
        self.counters = {"nonfinite_steps": 0, "consecutive_nonfinite": 0}
        self.stop_reason: str | None = None
        # Buffers that are non-finite by design (SAM 3's -inf causal text mask) are constants,
        # not a step going wrong: only the buffers finite at the start are checked after a step.
        self._finite_buffers = {
            name
            for name, buffer in unwrap(model).named_buffers()
            if buffer.is_floating_point() and bool(buffer.isfinite().all())
        }
        use_amp = self.cfg.amp == "on" or (self.cfg.amp == "auto" and device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")
        # Exponential moving average of the state dict (train.ema_decay), None when off.
        self.ema: dict[str, torch.Tensor] | None = None
        self.ema_updates = 0
        if self.cfg.ema_decay is not None:
            self.ema = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train until ``train.steps`` (or a SIGTERM/SIGINT); return the last validation metrics.

        A signal finishes the current step, writes ``last.pt`` (checkpoint hook) and returns with
        ``stop_reason`` set.
        """
        for hook in self.hooks:
            hook.on_fit_start(self)
        accum = self.cfg.grad_accum
        loader = train_loader(
            self.train_set,
            batch_size=self.cfg.batch_size * self.dist.world_size,
            seed=self.cfg.seed,
            start_step=self.step * accum,
            total_steps=self.cfg.steps * accum,
            num_workers=self.cfg.num_workers,
            collate_fn=self.collate_fn,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        try:
            self._loop(loader)
        finally:
            for hook in self.hooks:
                hook.on_fit_end(self)
        return self.last_metrics

    def _loop(self, loader) -> None:
        """Steps until the loader ends or a stop signal (see :meth:`fit`)."""
        accum, micro_batches = self.cfg.grad_accum, []
        with StopRequest() as stop:
            for batch in loader:
                micro_batches.append(batch)
                if len(micro_batches) < accum:
                    continue
                logs = self.train_step(micro_batches)
                micro_batches = []
                self.step += 1
                last = self.step == self.cfg.steps
                if self.step % self.cfg.eval_every == 0 or last:
                    self.validate()
                if all_reduce_flag(stop.requested is not None, self.dist):
                    self.stop_reason = stop.requested or "signal on another rank"
                if self.step % self.cfg.checkpoint_every == 0 or last or self.stop_reason:
                    broadcast_buffers(self.model, self.dist)  # rank 0 saves what all evaluate
                for hook in self.hooks:
                    hook.on_step_end(self, logs)
                if self.stop_reason:
                    break

    def autocast(self):
        """Autocast context when enabled (off on CPU by default: it slows CPU training)."""
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimisation step over ``train.grad_accum`` micro-batches.

        A non-finite loss or gradient norm either stops training (``train.nonfinite: stop``,
        raising :class:`~segmentation.errors.NonFiniteError` before any update, so written
        checkpoints stay intact) or skips the update (``skip``, counted; ``train.max_nonfinite``
        consecutive skips stop). A skipped step also restores the buffers its forward passes
        changed (BatchNorm running statistics), so one NaN batch cannot poison the network.
        """
        start = time.perf_counter()
        self.objective.train()
        self.optimizer.zero_grad(set_to_none=True)
        buffers = None
        if self.cfg.nonfinite == "skip":
            buffers = [b.detach().clone() for b in unwrap(self.model).buffers()]
        total, logs, images = 0.0, {}, 0
        for i, batch in enumerate(micro_batches):
            batch = self.to_device(batch)
            images += batch["image"].shape[0]
            last = i == len(micro_batches) - 1
            sync = nullcontext() if last or not self.dist.enabled else self.objective.no_sync()
            with sync:
                with self.autocast():
                    loss, logs = self.objective(batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.item() / len(micro_batches)
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        finite = math.isfinite(total) and math.isfinite(grad_norm)
        bad_buffer = None if not finite else self._non_finite_buffer()
        if not all_reduce_flag(not finite or bad_buffer is not None, self.dist):
            self.scaler.step(self.optimizer)
            self.counters["consecutive_nonfinite"] = 0
            if self.ema is not None:
                self._update_ema()
        else:
            self._non_finite(total, grad_norm, bad_buffer)
            for buffer, saved in zip(unwrap(self.model).buffers(), buffers, strict=True):
                buffer.copy_(saved)
        self.scaler.update()
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        seconds = time.perf_counter() - start
        return {
            "loss": total,
            **{k: float(v) for k, v in logs.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "images_per_s": images * self.dist.world_size / max(seconds, 1e-9),
        }

    @torch.no_grad()
    def _update_ema(self) -> None:
        """``ema += (1 - d) (weights - ema)`` with ``d = min(ema_decay, (1 + n) / (10 + n))``.

        Floating-point entries (parameters, BatchNorm statistics) are averaged; integer buffers
        (BatchNorm's batch counter) are copied.
        """
        self.ema_updates += 1
        n = self.ema_updates
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        live = unwrap(self.model).state_dict()
        avg, new = [], []
        for key, value in live.items():
            ema = self.ema.get(key)
            if ema is None or ema.shape != value.shape or not value.is_floating_point():
                self.ema[key] = value.detach().clone()  # new or integer entries follow the model
            else:
                avg.append(ema)
                new.append(value.detach())
        if avg:
            torch._foreach_lerp_(avg, new, 1.0 - decay)

    @contextmanager
    def averaged_weights(self):
        """Inside the block the model holds the EMA weights (no-op without ``ema_decay``)."""
        if self.ema is None:
            yield
            return
        model = unwrap(self.model)
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.ema)
        broadcast_buffers(
            self.model, self.dist
        )  # every rank evaluates rank 0's averaged statistics
        try:
            yield
        finally:
            model.load_state_dict(trained)

    def _non_finite_buffer(self) -> str | None:
        """The first buffer (BatchNorm statistics) the step made non-finite, or None.

        Huge activations can overflow a running variance while loss and gradients stay finite.
        """
        named = [(n, b) for n, b in unwrap(self.model).named_buffers() if n in self._finite_buffers]
        if not named or bool(torch.stack([b.isfinite().all() for _, b in named]).all()):
            return None
        return next(n for n, b in named if not b.isfinite().all())

    def _non_finite(self, loss: float, grad_norm: float, buffer: str | None = None) -> None:
        step = self.step + 1
        what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'}"
        if math.isfinite(loss) and math.isfinite(grad_norm):
            what = f"non-finite buffer '{buffer}'" if buffer else "non-finite value on another rank"
        if self.cfg.nonfinite == "stop":
            raise NonFiniteError(
                f"{what} (loss {loss}, grad norm {grad_norm}) at step {step}; training stopped "
                "before the update, so the checkpoints already written are intact. Lower "
                "optim.lr, enable train.grad_clip, set train.nonfinite: skip, or check the data."
            )
        self.counters["nonfinite_steps"] += 1
        self.counters["consecutive_nonfinite"] += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.counters["consecutive_nonfinite"] >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"{self.counters['consecutive_nonfinite']} consecutive non-finite steps up to step "
                f"{step} (train.max_nonfinite = {self.cfg.max_nonfinite}); training stopped. "
                "Lower optim.lr or check the data."
            )

    def to_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def validate(self) -> dict:
        """Evaluate on the validation split, update ``best`` and notify hooks."""
        broadcast_buffers(self.model, self.dist)  # every rank evaluates rank 0's network
        metrics = self.evaluate(self.val_set)
        name = self.best["metric"]
        # Stored as "higher is better" so hd95/assd select the lowest value.
        sign = 1.0 if higher_is_better(name) else -1.0
        value = metric_value(metrics, name)
        improved = math.isfinite(value) and sign * value > sign * self.best["value"]
        if improved:
            self.best = {"metric": self.best["metric"], "value": value, "step": self.step}
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(sign * value)
        self.last_metrics = metrics
        for hook in self.hooks:
            hook.on_eval_end(self, metrics, improved)
        return metrics

    def evaluate(self, dataset, *, boundary: bool | None = None) -> dict:
        """Metrics of the current model on ``dataset`` (each rank evaluates a shard; the integer
        counts and per-image rows are gathered exactly). ``boundary=None`` computes HD95/ASSD
        when ``eval.boundary`` asks for them or ``eval.metric`` is one of them. With
        ``train.ema_decay`` the averaged weights are evaluated.

        Raises:
            NonFiniteError: the network's logits are not finite (it diverged).
        """
        try:
            with self.averaged_weights():
                metrics, _ = evaluate_model(
                    self.model,
                    dataset,
                    device=self.device,
                    eval_config=self.config.eval,
                    boundary=self.config.validation_boundary if boundary is None else boundary,
                    collate_fn=self.collate_fn,
                    num_workers=self.cfg.num_workers,
                    autocast=self.autocast,
                    dist_info=self.dist,
                )
        except ValueError as err:
            if "NaN or inf" not in str(err):  # SegmentationMetrics.update's non-finite logits
                raise
            raise NonFiniteError(
                f"validation at step {self.step}: {err} Lower optim.lr or enable "
                "train.grad_clip; the checkpoints already written are intact."
            ) from err
        return metrics

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to rebuild the model and continue the run exactly.

        With ``train.ema_decay``, ``model`` holds the averaged weights (what validation measured
        and what evaluation, prediction and export load) and ``train_model`` the trained ones.
        """
        trained = clean_state_dict(unwrap(self.model).state_dict())
        ema = (
            {}
            if self.ema is None
            else {
                "train_model": trained,
                "ema_updates": self.ema_updates,
            }
        )
        return {
            "model_spec": self.spec,
            "model": trained if self.ema is None else clean_state_dict(self.ema),
            **ema,
            "config": self.config.raw,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": dict(self.best),
            "counters": dict(self.counters),
            "parameters": count_parameters(unwrap(self.model)),  # {"total", "trainable"}
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (resume).

        Raises:
            CheckpointError: the weights or the optimizer/scheduler state do not fit this run.
        """
        model = unwrap(self.model)
        load_weights(model, state.get("train_model", state["model"]), source="resumed checkpoint")
        if self.ema is not None:
            live = model.state_dict()
            if "train_model" in state:  # the average continues where it stopped
                averaged = clean_state_dict(state["model"])
                self.ema = {k: averaged[k].to(v.device).clone() for k, v in live.items()}
                self.ema_updates = int(state["ema_updates"])
            else:  # a run without averaging, resumed with it: the average starts here
                self.ema = {k: v.detach().clone() for k, v in live.items()}
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"resumed checkpoint: its optimizer/scheduler state does not fit this run "
                f"({type(err).__name__}: {err}); resume with the optim and sched sections the "
                "run started with, or start a new run with another --out."
            ) from err
        self.step, self.best = state["step"], dict(state["best"])
        self.counters.update(state.get("counters", {}))
        set_rng_state(state["rng"])
