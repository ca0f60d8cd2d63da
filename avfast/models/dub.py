"""Seed 001's dub-augmented audio-visual model: encoders, 512-d heads, L2-normalised embeddings.

A training instance is the quadruple ``(v, a_p, v_s, a_s)``: two windows of one shot (video ``v``
and ``v_s``), the primary audio ``a_p`` and the secondary (dubbed, or re-augmented) audio ``a_s``.
The video encoder embeds both windows; primary and secondary audio go through separate encoders
(the seed's choice) or one shared encoder (``shared_audio=True``). Every encoder has its own MLP head
to the 512-d contrastive space, and embeddings are L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avfast.models.encoders import ProjectionHead, build_audio_encoder, build_video_encoder

__all__ = ["DubModel", "build_dub_model", "count_parameters"]


class _Tower(nn.Module):
    """Encoder + projection head: input -> (B, embed_dim) L2-normalised embedding."""

    def __init__(self, encoder: nn.Module, embed_dim: int, head_hidden: int | None, norm: str):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.feature_dim, embed_dim, head_hidden, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(x)).float(), dim=-1)


class DubModel(nn.Module):
    """Video and audio towers of seed 001.

    Args:
        video_encoder: ``(B, 3, T, H, W) -> (B, Dv)`` with attribute ``feature_dim``; None for the
            audio-only variant.
        audio_encoder: ``(B, 2, n_mels, frames) -> (B, Da)`` for the primary audio.
        secondary_audio_encoder: encoder for the secondary audio; None shares ``audio_encoder``
            (and its head).
        embed_dim: size of the contrastive space (512 in the seed).

    ``forward(video=, audio_p=, video_s=, audio_s=)`` embeds what it is given and returns a dict
    with keys ``"v"``, ``"a_p"``, ``"v_s"``, ``"a_s"`` (those given), each ``(B, embed_dim)``,
    float32, unit L2 norm. ``video`` and ``video_s`` go through the encoder as one batch.
    """

    def __init__(self, video_encoder: nn.Module | None, audio_encoder: nn.Module,
                 secondary_audio_encoder: nn.Module | None = None, *, embed_dim: int = 512,
                 head_hidden: int | None = None, norm: str = "batch"):
        super().__init__()
        self.embed_dim = embed_dim
        self.video = _Tower(video_encoder, embed_dim, head_hidden, norm) if video_encoder is not None else None
        self.audio = _Tower(audio_encoder, embed_dim, head_hidden, norm)
        self.audio_s = (_Tower(secondary_audio_encoder, embed_dim, head_hidden, norm)
                        if secondary_audio_encoder is not None else None)

    @property
    def shared_audio(self) -> bool:
        return self.audio_s is None

    def forward(self, video: torch.Tensor | None = None, audio_p: torch.Tensor | None = None,
                video_s: torch.Tensor | None = None, audio_s: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        videos = [v for v in (video, video_s) if v is not None]
        if videos:
            if self.video is None:
                raise ValueError("this DubModel has no video encoder (audio-only) but was given video")
            z = self.video(torch.cat(videos) if len(videos) > 1 else videos[0])
            parts = z.split([v.shape[0] for v in videos])
            names = [n for n, v in (("v", video), ("v_s", video_s)) if v is not None]
            out.update(zip(names, parts))
        if audio_p is not None:
            out["a_p"] = self.audio(audio_p)
        if audio_s is not None:
            out["a_s"] = (self.audio if self.audio_s is None else self.audio_s)(audio_s)
        return out

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W) -> (B, embed_dim)`` normalised video embeddings."""
        return self.forward(video=video)["v"]

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, C, n_mels, frames) -> (B, embed_dim)`` normalised primary-audio embeddings."""
        return self.forward(audio_p=audio)["a_p"]


def build_dub_model(video: str | None = "x3d_m", audio: str = "acoustic_resnet50", *, shared_audio: bool = False,
                    embed_dim: int = 512, head_hidden: int | None = None, norm: str = "batch",
                    video_kwargs: dict | None = None, audio_kwargs: dict | None = None) -> DubModel:
    """A ``DubModel`` from encoder names (``video=None``: audio-only); kwargs go to the encoder configs."""
    vk = dict(video_kwargs or {}, norm=norm)
    ak = dict(audio_kwargs or {}, norm=norm)
    video_encoder = build_video_encoder(video, **vk) if video else None
    secondary = None if shared_audio else build_audio_encoder(audio, **ak)
    return DubModel(video_encoder, build_audio_encoder(audio, **ak), secondary, embed_dim=embed_dim,
                    head_hidden=head_hidden, norm=norm)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per top-level part of ``model`` (and ``"total"``), trainable or not."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
