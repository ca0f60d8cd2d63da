"""Learning-rate schedules: linear warm-up, then half-cosine (seed 001), step or multi-step decay.

The schedule is a pure function of the optimizer step, so a resumed run continues exactly.
"""
from __future__ import annotations

import bisect
import math

import torch

__all__ = ["warmup_cosine", "warmup_cosine_scheduler", "step_decay", "lr_multiplier", "Multiplier"]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (linear, never 0, reaching 1);
    then ``min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * p))`` with ``p`` going from 0 at the end
    of warm-up to 1 at ``total_steps`` (clamped after it).
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"total_steps must be >= 1 and warmup_steps >= 0 ({total_steps}, {warmup_steps} given)")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                            min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying ``warmup_cosine``; call ``.step()`` after every optimizer step."""
    warmup_cosine(0, total_steps, warmup_steps, min_ratio)  # validate now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_ratio))


def step_decay(step: int, gamma: float, *, every: int = 0, boundaries: list[int] = ()) -> float:
    """``gamma ** n``: ``n = step // every`` (step decay) or the number of ``boundaries <= step``
    (multi-step decay); ``every`` and ``boundaries`` in optimizer steps."""
    if every:
        return gamma ** (step // every)
    return gamma ** bisect.bisect_right(boundaries, step)


def lr_multiplier(step: int, *, schedule: str, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
                  every: int = 0, boundaries: list[int] = (), gamma: float = 0.1) -> float:
    """LR multiplier at optimizer step ``step`` for ``schedule``.

    ``cosine`` is ``warmup_cosine``. The others are ``min(1, (step + 1) / warmup_steps)`` (linear
    warm-up, 1 without one) times ``step_decay`` (``every`` for ``step``, ``boundaries`` for ``multistep``)
    (boundaries counted from step 0, as torch's StepLR / MultiStepLR count epochs) or 1 for ``constant``.
    """
    if schedule == "cosine":
        return warmup_cosine(step, total_steps, warmup_steps, min_ratio)
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule in ("constant", "plateau"):  # plateau: the trainer scales the lr on a validation plateau
        return warm
    if schedule == "step":
        if every < 1:
            raise ValueError(f"schedule 'step' needs every >= 1 optimizer steps ({every} given)")
        return warm * step_decay(step, gamma, every=every)
    if schedule == "multistep":
        return warm * step_decay(step, gamma, boundaries=sorted(boundaries))
    raise ValueError(f"schedule must be cosine, step, multistep or constant ({schedule!r} given)")


class Multiplier:
    """``lr_multiplier(step, **kwargs) * scale`` as a picklable callable for ``LambdaLR``.

    ``scale`` is what a validation plateau lowers (``schedule: plateau``); ``LambdaLR.state_dict``
    saves this object's attributes, so checkpoints keep it and resume stays exact."""

    def __init__(self, **kwargs):
        self.kwargs, self.scale = kwargs, 1.0
        lr_multiplier(0, **kwargs)  # validate now, not at the first step

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, **self.kwargs) * self.scale
