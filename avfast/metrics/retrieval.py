"""Cross-modal retrieval metrics: recall at k, median and mean rank.

The query of row ``i`` has its one correct item in column ``i`` of the gallery (the paired clip).
Ranks are 1-based; a tie with the correct item counts in the item's favour (rank = 1 + number of
gallery items scoring strictly higher).
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["recall_at_k", "median_rank", "ranks_from_similarity", "retrieval_summary"]


def _check_square(sim: torch.Tensor) -> None:
    if sim.dim() != 2 or sim.shape[0] > sim.shape[1]:
        raise ValueError(f"sim must be (Q, N) with Q <= N, query i matching item i; got shape {tuple(sim.shape)}")


def ranks_from_similarity(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of item ``i`` for query ``i``: ``sim`` (Q, N) -> (Q,) int64."""
    _check_square(sim)
    positive = sim.diagonal()[:, None]
    return (sim > positive).sum(dim=1) + 1


def recall_at_k(sim: torch.Tensor, k: int) -> float:
    """Fraction of queries whose correct item (the diagonal of ``sim`` (Q, N)) is in the top ``k``."""
    if k < 1:
        raise ValueError(f"k must be >= 1 ({k} given)")
    return float((ranks_from_similarity(sim) <= k).double().mean())


def median_rank(sim: torch.Tensor) -> float:
    """Median over queries of the 1-based rank of the correct item (``sim`` (Q, N))."""
    return float(ranks_from_similarity(sim).double().median())


def retrieval_summary(ranks: torch.Tensor, ks: Iterable[int] = (1, 5, 10), gallery_size: int | None = None) -> dict:
    """``{"R@k": ..., "median_rank", "mean_rank", "queries", "chance_R@1"}`` from 1-based ``ranks`` (Q,).

    R@k is in percent. ``chance_R@k = k / gallery_size`` (percent) is the expected value for random
    embeddings.
    """
    ranks = ranks.double()
    out = {f"R@{k}": 100.0 * float((ranks <= k).double().mean()) for k in ks}
    out["median_rank"] = float(ranks.median())
    out["mean_rank"] = float(ranks.mean())
    out["queries"] = int(ranks.numel())
    if gallery_size:
        out.update({f"chance_R@{k}": 100.0 * min(1.0, k / gallery_size) for k in ks})
    return out
