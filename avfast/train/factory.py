"""Build the model and the objective a ``Config`` describes."""
from __future__ import annotations

import torch

from avfast.models.dub import DubModel, build_dub_model
from avfast.train.config import Config
from avfast.train.objective import DubObjective

__all__ = ["build_model", "build_objective"]


def build_model(cfg: Config, seed: int | None = None) -> DubModel:
    """The ``DubModel`` of ``cfg.model`` for ``cfg.data.variant`` (``model.audio_sharing``; no
    secondary audio head or tower for ``no_speech``, no video tower for ``audio_only``). Initialised from ``seed`` (default
    ``cfg.train.seed``) so every rank builds identical weights."""
    m = cfg.model
    if seed is not None or cfg.train.seed is not None:
        torch.manual_seed(cfg.train.seed if seed is None else seed)
    sharing = "all" if cfg.data.variant == "no_speech" else m.audio_sharing  # no secondary audio: no second head
    return build_dub_model(m.video, m.audio, audio_sharing=sharing, embed_dim=m.embed_dim, head_hidden=m.head_hidden,
                           norm=m.norm, video_kwargs=m.video_kwargs, audio_kwargs=m.audio_kwargs)


def build_objective(cfg: Config) -> DubObjective:
    """The variant's loss (see ``avfast.train.objective``); it computes the mel on the training device
    for batches of waves (``train.mel_on_device``)."""
    from avfast.ops import MelConfig

    mel = MelConfig.preset(cfg.data.mel, sample_rate=cfg.data.sample_rate)
    return DubObjective(cfg.loss, cfg.data.variant, mel=mel)
