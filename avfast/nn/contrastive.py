"""Module wrappers of ``avfast.ops.contrastive_loss``: ``ContrastiveLoss`` and ``DubContrastiveLoss``."""
from __future__ import annotations

import math

import torch
from torch import nn

from avfast.ops.contrastive import contrastive_loss

__all__ = ["ContrastiveLoss", "DubContrastiveLoss"]


class ContrastiveLoss(nn.Module):
    """InfoNCE / SigLIP loss between paired embeddings (B, D) with same-source hard negatives.

    Args:
        tau: temperature (initial value when ``learn_scale``).
        learn_scale: hold a learnable ``logit_scale = log(1 / tau)`` parameter (CLIP-style, clamped to
            ``max_logit_scale`` in the op).
        kind: ``"infonce"`` | ``"siglip"``; SigLIP also learns ``logit_bias`` (init ``bias_init``).
        source_weight, symmetric, normalize, label_smoothing, reduction, gather, group, backend,
        max_logit_scale: as in ``avfast.ops.contrastive_loss``.

    Shape: ``forward(a (B, D), b (B, D), source_ids=None (B,), positive_ids=None (B,))`` -> scalar
    (or (B,) with ``reduction="none"``).
    """

    def __init__(self, tau: float = 0.07, *, learn_scale: bool = False, kind: str = "infonce",
                 source_weight: float = 1.0, symmetric: bool = True, normalize: bool = True,
                 label_smoothing: float = 0.0, reduction: str = "mean", gather: str = "none", group=None,
                 backend: str = "auto", max_logit_scale: float = 100.0, bias_init: float = -10.0):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"ContrastiveLoss: tau must be > 0, got {tau}")
        self.tau = tau
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau))) if learn_scale else None
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init))) if kind == "siglip" else None
        self.options = dict(kind=kind, source_weight=source_weight, symmetric=symmetric, normalize=normalize,
                            label_smoothing=label_smoothing, reduction=reduction, gather=gather, group=group,
                            backend=backend, max_logit_scale=max_logit_scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor, source_ids: torch.Tensor | None = None,
                positive_ids: torch.Tensor | None = None) -> torch.Tensor:
        return contrastive_loss(a, b, tau=self.tau, logit_scale=self.logit_scale, logit_bias=self.logit_bias,
                                source_ids=source_ids, positive_ids=positive_ids, **self.options)

    def extra_repr(self) -> str:
        learn = ", learn_scale=True" if self.logit_scale is not None else ""
        return f"tau={self.tau}{learn}, " + ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "group")


class DubContrastiveLoss(nn.Module):
    """Dub-augmented objective of seed 001 over the quadruple (v, a_p, v_s, a_s).

    ``L = NCE(v, a_p) + lambda_v * NCE(v_s, a_s) + lambda_a * NCE(a_p, a_s)``, each term a
    ``ContrastiveLoss`` sharing one temperature / logit scale. A term whose inputs are None (or whose
    lambda is 0) is left out, which gives the paper's variants:

    - dub-augmented (bilingual / multilingual): all four inputs, a_s in another language;
    - monolingual: a_s a second augmentation of the primary language (same call);
    - no-speech / single pair: ``forward(v, a_p)`` only;
    - audio-only (AUD): ``forward(None, a_p, None, a_s)`` = lambda_a * NCE(a_p, a_s).

    Args:
        lambda_v, lambda_a: weights of the secondary video-audio and the audio-audio terms.
        tau, learn_scale and the other keywords: as in ``ContrastiveLoss``.

    Shape: v, a_p, v_s, a_s (B, D) or None; source_ids, positive_ids (B,) or None -> scalar.
    ``forward(..., return_terms=True)`` also returns ``{"va": ..., "va_s": ..., "aa": ...}`` (unweighted
    terms that were computed).
    """

    def __init__(self, lambda_v: float = 1.0, lambda_a: float = 1.0, tau: float = 0.07, **options):
        super().__init__()
        self.lambda_v, self.lambda_a = float(lambda_v), float(lambda_a)
        self.nce = ContrastiveLoss(tau, **options)

    def forward(self, v: torch.Tensor | None, a_p: torch.Tensor | None, v_s: torch.Tensor | None = None,
                a_s: torch.Tensor | None = None, source_ids: torch.Tensor | None = None,
                positive_ids: torch.Tensor | None = None, *, return_terms: bool = False):
        pairs = (("va", 1.0, v, a_p), ("va_s", self.lambda_v, v_s, a_s), ("aa", self.lambda_a, a_p, a_s))
        used = [(name, weight, x, y) for name, weight, x, y in pairs
                if weight != 0.0 and x is not None and y is not None]
        if not used:
            raise ValueError("DubContrastiveLoss: no term can be computed: give (v, a_p), (v_s, a_s) or (a_p, a_s)")
        terms = {name: self.nce(x, y, source_ids, positive_ids) for name, _, x, y in used}
        total = sum(weight * terms[name] for name, weight, _, _ in used)
        return (total, terms) if return_terms else total

    def extra_repr(self) -> str:
        return f"lambda_v={self.lambda_v}, lambda_a={self.lambda_a}"
