"""The training loop of every model family: optimiser and schedule from the config, AMP,
accumulation, hooks after backward, clipping, periodic evaluation, early stopping, checkpoints, resume.

``Trainer`` is model- and data-agnostic. It needs

- ``model``: an ``nn.Module``;
- ``objective(model, batch) -> (loss, logs)`` or ``(loss, logs, aux)``: a scalar loss, a dict of
  floats to log, and optionally a dict handed to the hooks (e.g. per-modality logits for OGM-GE);
- ``data``: a ``DataSource`` (``steps_per_epoch`` micro-batches per epoch on this rank,
  ``clips_per_batch`` clips per micro-batch over all ranks, ``batches(epoch, start)`` yielding the
  epoch's micro-batches from index ``start``, and ``state_dict()``);
- optionally ``hooks``: objects with any of ``after_backward(trainer, aux_list) -> dict | None``
  (called once per optimizer step after every micro-batch's backward, with the gradients unscaled
  under fp16 AMP, before clipping and ``optimizer.step()``; ``aux_list`` holds each micro-batch's
  ``aux``) and ``on_epoch_end(trainer, metrics) -> dict | None``; the dicts they return are logged;
- optionally ``evaluate(trainer) -> dict`` run every ``train.eval_every`` epochs on every rank; with
  ``train.early_stopping_patience`` the run stops after that many evaluations without improving
  ``train.early_stopping_metric``, and ``checkpoints/best/`` keeps the best one.

Exact resume: the checkpoint holds model, optimizer, scheduler, grad scaler, the data position
(epoch, micro-batch) and every rank's RNG state; a resumed run computes the same next losses as an
uninterrupted one (bitwise on CPU, where the kernels are deterministic).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn

from avfast.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from avfast.train.config import Config, config_to_dict
from avfast.train.distributed import DistInfo, all_reduce_sum, unwrap_model, wrap_model
from avfast.train.progress import MetricsLog, ProgressBar
from avfast.train.optim import build_optimizer, build_scheduler

__all__ = ["Trainer", "DataSource", "seed_everything", "move_to_device", "resolve_precision"]


class DataSource(Protocol):
    steps_per_epoch: int
    clips_per_batch: int

    def batches(self, epoch: int, start: int) -> Iterator[Any]: ...

    def state_dict(self) -> dict: ...


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensor, or dict/list/tuple of them) on ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` ("auto": bf16 on CUDA, none on CPU); None = fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


class Trainer:
    """Runs ``cfg.optim.epochs`` epochs of ``objective`` over ``data`` (see the module docstring)."""

    def __init__(self, cfg: Config, model: nn.Module, objective: Callable, data: DataSource, *,
                 out_dir: str | Path | None = None, dist_info: DistInfo | None = None,
                 hooks: list | tuple = (), evaluate: Callable[["Trainer"], dict] | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.objective, self.data = cfg, objective, data
        self.hooks, self.evaluate = list(hooks), evaluate
        t = cfg.train
        if t.eval_every and evaluate is None:
            raise ValueError("train.eval_every > 0 needs an evaluate function (the family has none)")
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log if self.dist.is_main else (lambda *_: None)
        self.accum = cfg.optim.grad_accum
        self.steps_per_epoch = data.steps_per_epoch // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has {data.steps_per_epoch} micro-batches per rank, fewer than "
                             f"optim.grad_accum={self.accum}: use a smaller batch or more data")
        self.total_steps = max(1, math.ceil(cfg.optim.epochs * self.steps_per_epoch))
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.autocast_dtype = resolve_precision(cfg.train.precision, self.device)

        self.model = wrap_model(model.to(self.device), self.dist, fsdp=cfg.train.fsdp, sync_bn=cfg.train.sync_bn)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.forward_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.position = 0  # micro-batches of `epoch` consumed
        self.history: list[float] = []  # this rank's loss per optimizer step (this process only)
        self.evaluations: list[dict] = []  # (this process) every periodic evaluation, with its epoch
        self.best: float | None = None  # best early-stopping metric so far
        self.bad_evaluations = 0  # evaluations since it last improved
        self.stop_requested = False  # set by early stopping or a hook (trainer.request_stop())
        self.metrics = None
        if self.out_dir is not None and self.dist.is_main:
            self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", self.out_dir / "tensorboard")

    # ------------------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        if self.out_dir is None:
            raise ValueError("the Trainer has no out_dir, so it cannot save checkpoints")
        return self.out_dir / "checkpoints"

    def _model_and_optimizer_state(self) -> tuple[dict, dict]:
        if self.cfg.train.fsdp and self.dist.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            return get_state_dict(self.model, self.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return unwrap_model(self.model).state_dict(), self.optimizer.state_dict()

    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly (gathers every rank's RNG state)."""
        model_state, optim_state = self._model_and_optimizer_state()
        rngs = [rng_state()]
        if self.dist.distributed:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, rng_state())
        return {"model": model_state, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "data": self.data.state_dict(), "rng": rngs,
                "trainer": {"step": self.step, "epoch": self.epoch, "position": self.position,
                            "world_size": self.dist.world_size, "best": self.best,
                            "bad_evaluations": self.bad_evaluations, "stopped": self.stop_requested},
                "config": config_to_dict(self.cfg)}

    def save(self, subdir: str = "") -> Path | None:
        """Write a checkpoint (rank 0 writes; every rank must call) into ``checkpoints/`` or
        ``checkpoints/<subdir>/`` (``best``: one kept). Returns its path on rank 0."""
        state = self.state_dict()
        path = None
        if self.dist.is_main:
            directory = self.checkpoint_dir / subdir if subdir else self.checkpoint_dir
            keep = 1 if subdir else self.cfg.train.keep_checkpoints
            path = save_checkpoint(directory, self.step, state, keep=keep)
        if self.dist.distributed:
            dist.barrier()
        return path

    def load_state_dict(self, state: dict) -> None:
        if self.cfg.train.fsdp and self.dist.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            unwrap_model(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        t = state["trainer"]
        self.step, self.epoch, self.position = t["step"], t["epoch"], t["position"]
        self.best, self.bad_evaluations = t.get("best"), t.get("bad_evaluations", 0)
        self.stop_requested = t.get("stopped", False)
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank % len(rngs)])

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint file or a run/checkpoint directory (its ``latest``)."""
        path = Path(path)
        if path.is_dir() and (path / "checkpoints").is_dir():
            path = path / "checkpoints"
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch + 1}, batch {self.position})")

    # --------------------------------------------------------------------------------- training

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: list) -> tuple[float, dict]:
        """One optimizer step over ``micro_batches`` (gradient accumulation). Returns (loss, logs)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        total, logs, aux = 0.0, {}, []
        for i, batch in enumerate(micro_batches):
            batch = move_to_device(batch, self.device)
            sync = (i == n - 1) or not isinstance(self.model, nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else self.model.no_sync()):
                with self._autocast():
                    out = self.objective(self.forward_model, batch)
                loss, parts = out[0], out[1]
                aux.append(out[2] if len(out) > 2 else {})
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step} (micro-batch {i}); "
                                             "lower optim.lr or check the data")
                self.scaler.scale(loss / n).backward()
            total += loss.item() / n
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + float(v) / n
        after_backward = [h.after_backward for h in self.hooks if hasattr(h, "after_backward")]
        if after_backward or self.cfg.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)  # hooks and clipping see true gradients (no-op without fp16)
        for hook in after_backward:
            logs.update(_floats(hook(self, aux) or {}))
        if self.cfg.optim.clip_grad_norm > 0:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.history.append(total)
        return total, logs

    def _epoch_batches(self) -> Iterator[list]:
        """Groups of ``accum`` micro-batches from the current position; drops an incomplete tail."""
        remaining = self.steps_per_epoch * self.accum - self.position
        group: list = []
        for taken, batch in enumerate(self.data.batches(self.epoch, self.position)):
            if taken >= remaining:
                return
            group.append(batch)
            if len(group) == self.accum:
                yield group
                group = []

    def _mean_over_ranks(self, value: float) -> float:
        if not self.dist.distributed:
            return value
        return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=self.device))) / self.dist.world_size

    def train(self) -> dict:
        """Train until ``optim.epochs`` (or ``train.max_steps``); returns a summary dict."""
        cfg = self.cfg
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        bar = ProgressBar(self.total_steps, enabled=cfg.train.progress and self.dist.is_main)
        clips = 0
        timed_clips, timed_seconds = 0, 0.0
        start = time.perf_counter()
        last_loss = float("nan")
        usable = self.steps_per_epoch * self.accum
        saved_at = None
        while self.step < self.total_steps and not self.stop_requested:
            if self.position >= usable:
                self.epoch, self.position = self.epoch + 1, 0
            before = self.step
            for group in self._epoch_batches():
                t0 = time.perf_counter()
                loss, logs = self.train_step(group)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                self.position += len(group)
                n_clips = self.data.clips_per_batch * len(group)
                clips += n_clips
                if self.step > 1:  # the first step pays for compilation and warm-up
                    timed_clips, timed_seconds = timed_clips + n_clips, timed_seconds + dt
                last_loss = loss
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    loss_mean = self._mean_over_ranks(loss)
                    rate = timed_clips / timed_seconds if timed_seconds else n_clips / dt
                    record = {"step": self.step, "epoch": self.epoch, "loss": loss_mean,
                              "lr": self.scheduler.get_last_lr()[0], "clips_per_s": rate, **logs}
                    if self.metrics:
                        self.metrics.log(record, self.step)
                    bar.update(self.step, epoch=self.epoch, epochs=epochs, loss=loss_mean, **{"clips/s": rate})
                if self.position >= usable:
                    self._end_of_epoch()
                epoch_done = self.position >= usable and not cfg.train.checkpoint_every
                if self.out_dir is not None and (epoch_done or self.stop_requested or (
                        cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0)):
                    self.save()
                    saved_at = self.step
                if self.step >= self.total_steps or self.stop_requested:
                    break
            if self.stop_requested:
                self.log(f"stopped early at epoch {self.epoch + 1}: no improvement of "
                         f"{cfg.train.early_stopping_metric} in {self.bad_evaluations} evaluations "
                         f"(best {self.best})")
                break
            if self.step == before and self.position > 0:
                # the source's epoch ended early (a same-source sampler's epoch length varies with
                # its plan): go on with the next epoch
                self.epoch, self.position = self.epoch + 1, 0
                continue
            if self.step == before:
                raise RuntimeError(f"the data source yielded no batch for epoch {self.epoch} from "
                                   f"position {self.position}; expected {usable - self.position} micro-batches")
        bar.close()
        if self.out_dir is not None and saved_at != self.step:
            self.save()
        elapsed = time.perf_counter() - start
        rate = timed_clips / timed_seconds if timed_seconds else (clips / elapsed if elapsed else 0.0)
        return {"steps": self.step, "clips": clips, "seconds": elapsed, "clips_per_s": rate,
                "loss": self._mean_over_ranks(last_loss), "best": self.best, "stopped_early": self.stop_requested}

    def request_stop(self) -> None:
        """End training after the current optimizer step (a checkpoint is written)."""
        self.stop_requested = True

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.cfg.train.early_stopping_mode == "max" else value < self.best

    def _lower_lr(self, factor: float) -> None:
        """Scale the learning rate by ``factor`` from now on (a validation plateau)."""
        for fn in self.scheduler.lr_lambdas:
            fn.scale *= factor
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.scheduler.last_epoch)
        self.log(f"no gain in {self.cfg.train.early_stopping_metric} for {self.bad_evaluations} evaluations: "
                 f"lr x {factor} (now {self.optimizer.param_groups[0]['lr']:.3g})")

    def _end_of_epoch(self) -> None:
        """Periodic evaluation, early stopping and the hooks' ``on_epoch_end`` (every rank)."""
        t = self.cfg.train
        metrics: dict = {}
        if self.evaluate is not None and t.eval_every and (self.epoch + 1) % t.eval_every == 0:
            metrics = self.evaluate(self)
            self.evaluations.append({"epoch": self.epoch + 1, **metrics})
            if t.early_stopping_metric:
                if t.early_stopping_metric not in metrics:
                    raise KeyError(f"train.early_stopping_metric {t.early_stopping_metric!r} is not in the "
                                   f"evaluation's results {sorted(metrics)}")
                value = float(metrics[t.early_stopping_metric])
                if self._improved(value):
                    self.best, self.bad_evaluations = value, 0
                    if self.out_dir is not None:
                        self.save("best")
                else:
                    self.bad_evaluations += 1
                    o = self.cfg.optim
                    if o.schedule == "plateau" and self.bad_evaluations % o.plateau_patience == 0:
                        self._lower_lr(o.gamma)
                    if t.early_stopping_patience and self.bad_evaluations >= t.early_stopping_patience:
                        self.request_stop()
        for hook in self.hooks:
            if hasattr(hook, "on_epoch_end"):
                metrics.update(hook.on_epoch_end(self, metrics) or {})
        if metrics and self.metrics:
            self.metrics.log({"step": self.step, "epoch": self.epoch + 1, **_floats(metrics)}, self.step)

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()


def _floats(values: dict) -> dict:
    """The entries of ``values`` that are numbers or 0-d tensors, as floats (for logging)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out
