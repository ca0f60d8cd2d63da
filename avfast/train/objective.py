"""Seed 001's training objective per variant, on top of ``avfast.nn.DubContrastiveLoss``.

Every call into the contrastive op lives here. Terms per ``data.variant`` (supplementary B.3):

============  =====================================  ==========================================
variant       model inputs                           loss
============  =====================================  ==========================================
monolingual   v, a_p, v_s, a_s (a_s: same language)  NCE(v, a_p) + l_v NCE(v_s, a_s) + l_a NCE(a_p, a_s)
bilingual     same, a_s in the one dub language      same
multilingual  same, a_s round-robin over languages   same
no_speech     v, a_p (speech-free track)             NCE(v, a_p)
audio_only    a_p, a_s                               NCE(a_p, a_s)
============  =====================================  ==========================================

``source_ids`` (the movie of each clip, from the same-source sampler) are passed to the loss, which
weighs same-source negatives by ``loss.source_weight`` (1 = plain InfoNCE, the seed's setting: the
sampler alone makes those hard negatives frequent). Under DDP the negatives of every rank enter
the loss (``loss.gather``).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from avfast.train.config import LossConfig

__all__ = ["DubObjective", "MODEL_INPUTS", "BATCH_KEYS"]

# model argument -> batch entry (avfast.data.QuadrupleDataset's names)
BATCH_KEYS = {"video": "video", "audio_p": "audio", "video_s": "video_s", "audio_s": "audio_s"}
# which model arguments a variant feeds
MODEL_INPUTS = {
    "monolingual": ("video", "audio_p", "video_s", "audio_s"),
    "bilingual": ("video", "audio_p", "video_s", "audio_s"),
    "multilingual": ("video", "audio_p", "video_s", "audio_s"),
    "no_speech": ("video", "audio_p"),
    "audio_only": ("audio_p", "audio_s"),
}


class DubObjective(nn.Module):
    """``objective(model, batch) -> (loss, {"loss_va": ..., ...})`` for a ``DubModel`` and a variant.

    ``batch`` holds ``video``/``video_s`` (B, 3, T, H, W), ``audio``/``audio_s`` (B, C, n_mels, F)
    as the variant needs (see ``MODEL_INPUTS``, ``BATCH_KEYS``) and optionally ``source`` (B,) int64.
    """

    def __init__(self, loss: LossConfig, variant: str, *, distributed: bool | None = None):
        super().__init__()
        from avfast.nn import DubContrastiveLoss  # the contrastive op's module (avfast.nn.contrastive)

        if variant not in MODEL_INPUTS:
            raise ValueError(f"variant must be one of {sorted(MODEL_INPUTS)} ({variant!r} given)")
        if distributed is None:
            distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.variant = variant
        self.inputs = MODEL_INPUTS[variant]
        lambda_a = 1.0 if variant == "audio_only" else loss.lambda_a
        self.loss = DubContrastiveLoss(lambda_v=loss.lambda_v, lambda_a=lambda_a, tau=loss.tau,
                                       source_weight=loss.source_weight,
                                       gather=loss.gather if distributed else "none", backend=loss.backend)

    def embed(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        keys = [BATCH_KEYS[k] for k in self.inputs]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"variant {self.variant!r} needs batch entries {keys}; missing {missing}")
        return model(**{k: batch[BATCH_KEYS[k]] for k in self.inputs})

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        z = self.embed(model, batch)
        total, terms = self.loss(z.get("v"), z.get("a_p"), z.get("v_s"), z.get("a_s"),
                                 source_ids=batch.get("source"), return_terms=True)
        return total, {f"loss_{name}": value.detach() for name, value in terms.items()}
