"""Optimiser and learning-rate schedule of a run, from ``cfg.optim`` (see ``OptimConfig``)."""
from __future__ import annotations

import torch
from torch import nn

from avfast.train.schedule import Multiplier

__all__ = ["build_optimizer", "build_scheduler", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float, decay_1d: bool = False) -> list[dict]:
    """Trainable parameters in two groups: decayed, and (unless ``decay_1d``) biases and norm
    scales (1-D parameters) without weight decay. Frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter (every requires_grad is False)")
    if decay_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim) -> torch.optim.Optimizer:
    """``optim.name`` (adamw | adam | sgd) over ``param_groups(model, ...)``."""
    groups = param_groups(model, optim.weight_decay, optim.decay_1d)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)
    raise ValueError(f"optim.name must be adamw, adam or sgd ({optim.name!r} given)")


def build_scheduler(optimizer: torch.optim.Optimizer, optim, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step ``LambdaLR`` of ``optim.schedule``; epochs in the config become steps
    with ``steps_per_epoch`` optimizer steps per epoch."""
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    total = max(total_steps, warmup + 1)
    kwargs = dict(schedule=optim.schedule, total_steps=total, warmup_steps=warmup, min_ratio=optim.min_lr_ratio,
                  every=max(1, round(optim.step_size * steps_per_epoch)) if optim.schedule == "step" else 0,
                  boundaries=sorted(round(m * steps_per_epoch) for m in optim.milestones), gamma=optim.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Multiplier(**kwargs))
