"""Multi-label classification metrics: average precision per class and mAP (VGGSound / seed 004)."""
from __future__ import annotations

import torch

__all__ = ["average_precision", "mean_average_precision"]


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class AP of ``scores (N, C)`` against 0/1 ``labels (N, C)`` -> ``(C,)``, NaN for a class
    without positives. AP = mean over the positives of the precision at their rank (scores sorted
    descending; tied scores share their group's last rank, as ``sklearn.average_precision_score``)."""
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores and labels must both be (N, C), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    s, y = scores.double().cpu(), labels.double().cpu()
    order = torch.sort(s, dim=0, descending=True, stable=True).indices
    s_sorted, y_sorted = s.gather(0, order), y.gather(0, order)
    tp = y_sorted.cumsum(0)
    n = s.shape[0]
    rank = torch.arange(1, n + 1, dtype=torch.float64)[:, None].expand_as(tp)
    # a tie group is scored at its last member: propagate (tp, rank) of the group's end backwards
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[1:] != s_sorted[:-1]
    idx = torch.where(last, torch.arange(n)[:, None].expand_as(tp), torch.full_like(tp, n, dtype=torch.long))
    idx = idx.flip(0).cummin(0).values.flip(0)
    precision = tp.gather(0, idx) / rank.gather(0, idx)
    positives = y.sum(0)
    # sum of precision over each group's positives = precision at group end * positives in group
    ap = (precision * y_sorted).sum(0) / positives
    out = torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))
    return out.to(scores.dtype if scores.is_floating_point() else torch.float64)


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of ``average_precision`` over the classes with at least one positive."""
    ap = average_precision(scores, labels)
    ap = ap[~ap.isnan()]
    if ap.numel() == 0:
        raise ValueError("mean_average_precision: no class has a positive label")
    return float(ap.mean())
