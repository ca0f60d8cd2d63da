"""Learning-rate schedule of seed 001: linear warm-up, then half-cosine annealing.

The schedule is a pure function of the optimizer step, so a resumed run continues exactly.
"""
from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "warmup_cosine_scheduler"]


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
