"""Seed 001's dub-augmented audio-visual model: encoders, 512-d heads, L2-normalised embeddings.

A training instance is the quadruple ``(v, a_p, v_s, a_s)``: two windows of one shot (video ``v``
and ``v_s``), the primary audio ``a_p`` and the secondary (dubbed, or re-augmented) audio ``a_s``.
The video encoder embeds both windows. Audio weight sharing (``audio_sharing``), after seed 001
B.3 ("We share backbone weights (i.e. Acoustic ResNet50) across audio variants with primary and
secondary (dubbed) languages. We do not share weights for primary vs. secondary audio"):

- ``"backbone"`` (the paper): one Acoustic ResNet for both audios, a separate 512-d head each;
- ``"all"``: one backbone and one head;
- ``"none"``: two audio towers (backbone + head each).

Every embedding is L2-normalised. ``features_audio`` / ``features_video`` give the pre-projection
backbone features (1024-d in the paper) that the probes use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avfast.models.encoders import ProjectionHead, build_audio_encoder, build_video_encoder

__all__ = ["DubModel", "build_dub_model", "count_parameters", "AUDIO_SHARING"]


class _Tower(nn.Module):
    """Encoder + projection head: input -> (B, embed_dim) L2-normalised embedding."""

    def __init__(self, encoder: nn.Module, embed_dim: int, head_hidden: int | None, norm: str):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.feature_dim, embed_dim, head_hidden, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(x)).float(), dim=-1)


AUDIO_SHARING = ("backbone", "all", "none")


class DubModel(nn.Module):
    """Video and audio towers of seed 001.

    Args:
        video_encoder: ``(B, 3, T, H, W) -> (B, Dv)`` with attribute ``feature_dim``; None for the
            audio-only variant.
        audio_encoder: ``(B, 2, n_mels, frames) -> (B, Da)``: the primary audio's backbone (shared
            with the secondary audio unless ``audio_sharing="none"``).
        secondary_audio_encoder: the secondary audio's backbone, only with ``audio_sharing="none"``.
        audio_sharing: ``"backbone"`` | ``"all"`` | ``"none"`` (see the module docstring).
        embed_dim: size of the contrastive space (512 in the seed).

    ``forward(video=, audio_p=, video_s=, audio_s=)`` embeds what it is given and returns a dict
    with keys ``"v"``, ``"a_p"``, ``"v_s"``, ``"a_s"`` (those given), each ``(B, embed_dim)``,
    float32, unit L2 norm. ``video`` and ``video_s`` go through the encoder as one batch, and so do
    ``audio_p`` and ``audio_s`` when they share the backbone.
    """

    def __init__(self, video_encoder: nn.Module | None, audio_encoder: nn.Module,
                 secondary_audio_encoder: nn.Module | None = None, *, audio_sharing: str = "backbone",
                 embed_dim: int = 512, head_hidden: int | None = None, norm: str = "batch"):
        super().__init__()
        if audio_sharing not in AUDIO_SHARING:
            raise ValueError(f"audio_sharing must be one of {AUDIO_SHARING} ({audio_sharing!r} given)")
        if (secondary_audio_encoder is not None) != (audio_sharing == "none"):
            raise ValueError("secondary_audio_encoder goes with audio_sharing='none', and only with it "
                             f"(audio_sharing={audio_sharing!r})")
        self.embed_dim = embed_dim
        self.audio_sharing = audio_sharing
        self.video = _Tower(video_encoder, embed_dim, head_hidden, norm) if video_encoder is not None else None
        self.audio = _Tower(audio_encoder, embed_dim, head_hidden, norm)
        if audio_sharing == "none":
            self.audio_s = _Tower(secondary_audio_encoder, embed_dim, head_hidden, norm)
        elif audio_sharing == "backbone":
            self.audio_s_head = ProjectionHead(audio_encoder.feature_dim, embed_dim, head_hidden, norm=norm)

    def _secondary(self, audio_s: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.audio_sharing == "none":
            return self.audio_s(audio_s)
        head = self.audio.head if self.audio_sharing == "all" else self.audio_s_head
        h = self.audio.encoder(audio_s) if features is None else features
        return F.normalize(head(h).float(), dim=-1)

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
        if audio_p is not None and audio_s is not None and self.audio_sharing != "none":
            h_p, h_s = self.audio.encoder(torch.cat([audio_p, audio_s])).split([audio_p.shape[0], audio_s.shape[0]])
            out["a_p"] = F.normalize(self.audio.head(h_p).float(), dim=-1)
            out["a_s"] = self._secondary(audio_s, h_s)
            return out
        if audio_p is not None:
            out["a_p"] = self.audio(audio_p)
        if audio_s is not None:
            out["a_s"] = self._secondary(audio_s)
        return out

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W) -> (B, embed_dim)`` normalised video embeddings."""
        return self.forward(video=video)["v"]

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, C, n_mels, frames) -> (B, embed_dim)`` normalised primary-audio embeddings."""
        return self.forward(audio_p=audio)["a_p"]

    def features_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, C, n_mels, frames)`` (or mono ``(B, n_mels, frames)``, duplicated to pseudo-stereo)
        -> ``(B, Da)`` pre-projection primary-audio backbone features (1024-d for Acoustic ResNet50)."""
        return self.audio.encoder(audio)

    def features_video(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W) -> (B, Dv)`` pre-projection video backbone features."""
        if self.video is None:
            raise ValueError("this DubModel has no video encoder (audio-only)")
        return self.video.encoder(video)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Convert a checkpoint of another sharing mode where that is exact, else refuse naming its mode."""
        keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        written = ("none" if any(k.startswith("audio_s.") for k in keys) else
                   "backbone" if any(k.startswith("audio_s_head.") for k in keys) else "all")
        if written != self.audio_sharing and any(k.startswith("audio.") for k in keys):
            if written == "all":  # one head for both: copying it is the same function
                if self.audio_sharing == "backbone":
                    for k in [k for k in keys if k.startswith("audio.head.")]:
                        state_dict[prefix + "audio_s_head." + k[len("audio.head."):]] = state_dict[prefix + k]
                else:  # none: the secondary tower starts as a copy of the one tower
                    for k in [k for k in keys if k.startswith("audio.")]:
                        state_dict[prefix + "audio_s." + k[len("audio."):]] = state_dict[prefix + k]
            else:
                raise RuntimeError(
                    f"this checkpoint was written with model.audio_sharing={written!r} "
                    f"({'separate primary and secondary audio towers' if written == 'none' else 'a shared backbone with two heads'}),"
                    f" this model has audio_sharing={self.audio_sharing!r}: load it with "
                    f"--set model.audio_sharing={written} (old checkpoints: also --set model.shared_audio=null)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def build_dub_model(video: str | None = "x3d_m", audio: str = "acoustic_resnet50", *,
                    audio_sharing: str = "backbone", embed_dim: int = 512, head_hidden: int | None = None,
                    norm: str = "batch", video_kwargs: dict | None = None, audio_kwargs: dict | None = None) -> DubModel:
    """A ``DubModel`` from encoder names (``video=None``: audio-only); kwargs go to the encoder configs.
    ``audio_sharing``: ``"backbone"`` (seed 001) | ``"all"`` | ``"none"``."""
    vk = dict(video_kwargs or {}, norm=norm)
    ak = dict(audio_kwargs or {}, norm=norm)
    video_encoder = build_video_encoder(video, **vk) if video else None
    primary = build_audio_encoder(audio, **ak)
    secondary = build_audio_encoder(audio, **ak) if audio_sharing == "none" else None
    return DubModel(video_encoder, primary, secondary, audio_sharing=audio_sharing, embed_dim=embed_dim,
                    head_hidden=head_hidden, norm=norm)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per top-level part of ``model`` (and ``"total"``), trainable or not."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
