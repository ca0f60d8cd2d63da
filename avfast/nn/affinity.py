"""``AffinityTopK``: module form of ``avfast.ops.affinity_topk``."""
from __future__ import annotations

import torch
from torch import nn

from avfast.ops.affinity import affinity_topk

__all__ = ["AffinityTopK"]


class AffinityTopK(nn.Module):
    """For each row of x the k most similar rows of y (and optionally their weighted sum).

    .. devices:: CPU CUDA
    .. properties:: Autograd

    Holds the settings of ``avfast.ops.affinity_topk``; no parameters. With ``aggregate=True`` it is
    the counterfactual learning step of DCL: S = cos(x, y), top-k, w = softmax(exp(S / tau)) (with
    ``weights="exp_softmax"``), x' = sum_j w_j y_j.

    Args:
        k, tau, metric, exclude_self, aggregate, weights, compute_dtype, backend: as in
            ``avfast.ops.affinity_topk``.

    Shape:
        x (B, D) or (G, B, D); y (N, D) or (G, N, D), default x; values (N, Dv) or (G, N, Dv).
        Returns values (..., B, k), indices (..., B, k) and, with ``aggregate``, (..., B, Dv).
    """

    def __init__(self, k: int = 5, *, tau: float = 1.0, metric: str = "cosine", exclude_self: bool = False,
                 aggregate: bool = False, weights: str = "softmax", compute_dtype: torch.dtype | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        self.k, self.tau, self.metric, self.exclude_self = k, tau, metric, exclude_self
        self.aggregate, self.weights, self.compute_dtype, self.backend = aggregate, weights, compute_dtype, backend

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, values: torch.Tensor | None = None):
        return affinity_topk(x, y, self.k, tau=self.tau, metric=self.metric, exclude_self=self.exclude_self,
                             aggregate=self.aggregate, weights=self.weights, values=values,
                             compute_dtype=self.compute_dtype, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"k={self.k}, tau={self.tau}, metric={self.metric!r}, exclude_self={self.exclude_self}, "
                f"aggregate={self.aggregate}, weights={self.weights!r}")
