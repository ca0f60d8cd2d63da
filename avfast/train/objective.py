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

With ``train.mel_on_device`` the batch holds waves and the SpecAugment masks the workers drew
(``audio_freq_masks`` / ``audio_time_masks``, same for ``audio_s``): ``device_mel`` turns them into
the masked dB-mel with one ``ops.mel_spectrogram`` call per audio entry on the training device.

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

__all__ = ["DubObjective", "MODEL_INPUTS", "BATCH_KEYS", "device_mel"]

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


def device_mel(wave: torch.Tensor, freq_masks: torch.Tensor, time_masks: torch.Tensor, config) -> torch.Tensor:
    """Masked mel of a batch on ``wave``'s device: wave (B, C, N), masks (B, n, 2) [start, end) mel rows
    / frames (``avfast.data.device_mel_masks``) -> (B, C, n_mels, frames), what the worker path gives:
    one fused ``ops.mel_spectrogram`` call with the workers' masks."""
    from avfast import ops

    return ops.mel_spectrogram(wave, config, masks=ops.MelMasks(freq_masks, time_masks))


class DubObjective(nn.Module):
    """``objective(model, batch) -> (loss, {"loss_va": ..., ...})`` for a ``DubModel`` and a variant.

    ``batch`` holds ``video``/``video_s`` (B, 3, T, H, W), ``audio``/``audio_s`` (B, C, n_mels, F)
    as the variant needs (see ``MODEL_INPUTS``, ``BATCH_KEYS``) and optionally ``source`` (B,) int64.
    """

    def __init__(self, loss: LossConfig, variant: str, *, distributed: bool | None = None, mel=None):
        super().__init__()
        from avfast.nn import DubContrastiveLoss  # the contrastive op's module (avfast.nn.contrastive)

        if variant not in MODEL_INPUTS:
            raise ValueError(f"variant must be one of {sorted(MODEL_INPUTS)} ({variant!r} given)")
        if distributed is None:
            distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.variant = variant
        self.mel = mel  # MelConfig of the data (for batches of waves + masks: mel on the training device)
        self.inputs = MODEL_INPUTS[variant]
        lambda_a = 1.0 if variant == "audio_only" else loss.lambda_a
        self.loss = DubContrastiveLoss(lambda_v=loss.lambda_v, lambda_a=lambda_a, tau=loss.tau,
                                       source_weight=loss.source_weight,
                                       gather=loss.gather if distributed else "none", backend=loss.backend)

    def mel_on_device(self, batch: dict) -> dict:
        """``batch`` with waves + masks (``train.mel_on_device``) turned into masked mel; else unchanged."""
        keys = [k for k in ("audio", "audio_s") if k + "_freq_masks" in batch]
        if not keys:
            return batch
        if self.mel is None:
            raise ValueError("the batch holds waves and masks (train.mel_on_device) but the objective has no mel config")
        out = dict(batch)
        for k in keys:
            out[k] = device_mel(batch[k], batch[k + "_freq_masks"], batch[k + "_time_masks"], self.mel)
        return out

    def embed(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        batch = self.mel_on_device(batch)
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
