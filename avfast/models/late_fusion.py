"""PACS fusion heads of seed 000's baselines (LateFusion, CLIP-style, AudioCLIP-style) and the task loss.

Every variant scores a question against the two objects of a pair: the question's text feature
and each object's modality features are embedded by their own BatchNorm + MLP (hidden 768) into
one space; the answer is the object whose embedding is closer (cosine) to the question's.

- ``late_fusion``: video frame features (ViT-B/16, 768) mean-pooled over frames + audio features (AST, 768).
- ``clip``: video only (the seed's CLIP baseline; 512-wide CLIP image features by default in its config).
- ``audioclip``: video + audio features from files (AudioCLIP's 1024-wide embeddings in its config).

Task loss (the public DCL code): ``TripletMarginWithDistanceLoss(distance=cosine similarity,
margin=1)`` with the question as anchor, the wrong object as "positive" and the right one as
"negative", i.e. ``mean(relu(cos(q, wrong) - cos(q, right) + margin))``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VARIANTS", "FusionConfig", "LateFusion", "triplet_cosine_loss", "predict_answer", "pool_time"]

VARIANTS = {"late_fusion": ("video", "audio"), "clip": ("video",), "audioclip": ("video", "audio")}


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Widths of a fusion head; defaults: LateFusion on PACS features."""

    variant: str = "late_fusion"
    # DeBERTa-v3-large's CLS is 1024 wide; the seed writes d = 768 (its Sec. 1). Configurable.
    text_dim: int = 1024
    video_dim: int = 768
    audio_dim: int = 768
    hidden: int = 768
    out_dim: int = 768
    dropout: float = 0.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"FusionConfig.variant must be one of {sorted(VARIANTS)} ({self.variant!r} given)")
        for name in ("text_dim", "video_dim", "audio_dim", "hidden", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"FusionConfig.{name} must be >= 1 ({getattr(self, name)} given)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FusionConfig.dropout must be in [0, 1) ({self.dropout} given)")

    @property
    def modalities(self) -> tuple[str, ...]:
        return VARIANTS[self.variant]


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """BatchNorm over the input, then Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


def pool_time(x: Tensor) -> Tensor:
    """(B, T, D) -> mean over T (B, D); (B, D) unchanged."""
    return x.mean(1) if x.dim() == 3 else x


class LateFusion(nn.Module):
    """A fusion head: text (B, text_dim) -> q (B, out); an object's parts [(B, d_i)] -> (B, out).

    ``object_dims`` replaces the per-object input widths (DCL feeds [static, dynamic] factors and the
    counterfactual features instead of pooled features); default: the variant's modality widths.
    ``forward(batch)`` runs the plain baseline on a PACS batch (keys ``text``, ``video1``, ``video2``,
    ``audio1``, ``audio2``; video (B, T, D) is mean-pooled over frames, audio may be (B, D) or (B, T, D)).
    """

    def __init__(self, config: FusionConfig = FusionConfig(), *, object_dims: tuple[int, ...] | None = None):
        super().__init__()
        c = self.config = config
        dims = object_dims if object_dims is not None else tuple(getattr(c, f"{m}_dim") for m in c.modalities)
        self.object_dim = sum(dims)
        self.text_mlp = _mlp(c.text_dim, c.hidden, c.out_dim, c.dropout)
        self.object_mlp = _mlp(self.object_dim, c.hidden, c.out_dim, c.dropout)

    def encode_text(self, text: Tensor) -> Tensor:
        if text.dim() != 2 or text.shape[1] != self.config.text_dim:
            raise ValueError(f"LateFusion: text features must be (B, {self.config.text_dim}), got {tuple(text.shape)}")
        return self.text_mlp(text)

    def encode_object(self, parts: list[Tensor]) -> Tensor:
        x = torch.cat(parts, -1)
        if x.shape[-1] != self.object_dim:
            raise ValueError(f"LateFusion: object features are {x.shape[-1]} wide, the head expects {self.object_dim}")
        return self.object_mlp(x)

    def pooled_parts(self, batch: dict, which: int) -> list[Tensor]:
        """The variant's modalities of object ``which`` (1 or 2), each pooled over time."""
        parts = []
        for m in self.config.modalities:
            x = batch[f"{m}{which}"]
            width = getattr(self.config, f"{m}_dim")
            if x.shape[-1] != width:
                raise ValueError(f"LateFusion: {m}{which} features are {x.shape[-1]} wide, expected {width}")
            parts.append(pool_time(x))
        return parts

    def forward(self, batch: dict) -> dict:
        return {"q": self.encode_text(batch["text"]), "o1": self.encode_object(self.pooled_parts(batch, 1)),
                "o2": self.encode_object(self.pooled_parts(batch, 2))}


def triplet_cosine_loss(q: Tensor, o1: Tensor, o2: Tensor, label: Tensor, margin: float = 1.0) -> Tensor:
    """The PACS triplet loss: mean over the batch of ``relu(cos(q, wrong) - cos(q, right) + margin)``.

    q, o1, o2 (B, D); label (B,) in {0, 1}: 0 = object 1 is the answer.
    """
    if not (q.shape == o1.shape == o2.shape) or label.shape != q.shape[:1]:
        raise ValueError(f"triplet_cosine_loss: q, o1, o2 must share a shape (B, D) and label be (B,); got "
                         f"{tuple(q.shape)}, {tuple(o1.shape)}, {tuple(o2.shape)}, {tuple(label.shape)}")
    s1, s2 = F.cosine_similarity(q, o1, dim=-1), F.cosine_similarity(q, o2, dim=-1)
    first = label == 0
    right, wrong = torch.where(first, s1, s2), torch.where(first, s2, s1)
    return F.relu(wrong - right + margin).mean()


def predict_answer(q: Tensor, o1: Tensor, o2: Tensor) -> Tensor:
    """The answer (B,) int64: 0 when cos(q, o1) > cos(q, o2), else 1."""
    return (F.cosine_similarity(q, o1, dim=-1) <= F.cosine_similarity(q, o2, dim=-1)).long()
