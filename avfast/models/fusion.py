"""Two-modality fusion heads (sum, concat, FiLM, gated) with per-modality contributions, and the
two-encoder classifier OGM-GE trains (seed 003; GeWu-Lab/OGM-GE_CVPR2022's fusion modules).

Every head maps audio features a (B, D_a) and visual features v (B, D_v) to ``FusionOutput``:
``logits`` (B, C) and each modality's contribution ``out_a``, ``out_v`` (B, C), defined so that
``out_a + out_v == logits`` (OGM-GE scores each modality by softmax(out_m)[y]):

- sum:    logits = W_a a + b_a + W_v v + b_v;      out_a = W_a a + b_a, out_v = W_v v + b_v.
- concat: logits = W [a; v] + b;                    out_a = W[:, :D_a] a + b/2, out_v = W[:, D_a:] v + b/2
  (the public code's split).
- FiLM:   logits = W (gamma(m) * z + beta(m)) + b, one modality m modulating the other z;
          out_z = W z + b/2 (z as if unmodulated), out_m = logits - out_z (what m's modulation adds).
- gated:  logits = W (sigmoid(G g) * (H c)) + b, one modality g gating the other c;
          out_c = W (H c / 2) + b/2 (c at the neutral gate 1/2), out_g = logits - out_c.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from avfast.models.mit import load_state_dict_file
from avfast.models.resnet2d import ResNet2d, ResNet2dConfig

__all__ = ["FusionOutput", "SumFusion", "ConcatFusion", "FiLMFusion", "GatedFusion", "FUSIONS", "build_fusion",
           "TwoEncoderConfig", "TwoEncoderClassifier", "build_two_encoder", "two_encoder_tiny"]


class FusionOutput(NamedTuple):
    logits: torch.Tensor
    out_a: torch.Tensor
    out_v: torch.Tensor


class SumFusion(nn.Module):
    def __init__(self, dim_a: int, dim_v: int, classes: int, hidden: int = 512):
        super().__init__()
        self.fc_a, self.fc_v = nn.Linear(dim_a, classes), nn.Linear(dim_v, classes)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> FusionOutput:
        out_a, out_v = self.fc_a(a), self.fc_v(v)
        return FusionOutput(out_a + out_v, out_a, out_v)


class ConcatFusion(nn.Module):
    def __init__(self, dim_a: int, dim_v: int, classes: int, hidden: int = 512):
        super().__init__()
        self.dim_a = dim_a
        self.fc = nn.Linear(dim_a + dim_v, classes)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> FusionOutput:
        w, b = self.fc.weight, self.fc.bias
        out_a = a @ w[:, :self.dim_a].T + b / 2
        out_v = v @ w[:, self.dim_a:].T + b / 2
        return FusionOutput(self.fc(torch.cat([a, v], dim=-1)), out_a, out_v)


def _ordered(a, v, first_is_audio: bool):
    return (a, v) if first_is_audio else (v, a)


class FiLMFusion(nn.Module):
    """``modulator="audio"``: audio's gamma/beta modulate the visual features (the public default)."""

    def __init__(self, dim_a: int, dim_v: int, classes: int, hidden: int = 512, modulator: str = "audio"):
        super().__init__()
        if modulator not in ("audio", "visual"):
            raise ValueError(f"FiLMFusion: modulator must be audio|visual, got {modulator!r}")
        self.audio_modulates = modulator == "audio"
        dm, dz = _ordered(dim_a, dim_v, self.audio_modulates)
        self.dim_z = dz
        self.film = nn.Linear(dm, 2 * dz)
        self.fc = nn.Linear(dz, classes)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> FusionOutput:
        m, z = _ordered(a, v, self.audio_modulates)
        gamma, beta = self.film(m).split(self.dim_z, dim=-1)
        logits = self.fc(gamma * z + beta)
        out_z = z @ self.fc.weight.T + self.fc.bias / 2
        out_m = logits - out_z
        out_a, out_v = _ordered(out_m, out_z, self.audio_modulates)
        return FusionOutput(logits, out_a, out_v)


class GatedFusion(nn.Module):
    """``gate="audio"``: sigmoid of the audio projection gates the visual projection (public default)."""

    def __init__(self, dim_a: int, dim_v: int, classes: int, hidden: int = 512, gate: str = "audio"):
        super().__init__()
        if gate not in ("audio", "visual"):
            raise ValueError(f"GatedFusion: gate must be audio|visual, got {gate!r}")
        self.audio_gates = gate == "audio"
        self.fc_a, self.fc_v = nn.Linear(dim_a, hidden), nn.Linear(dim_v, hidden)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> FusionOutput:
        g, c = _ordered(self.fc_a(a), self.fc_v(v), self.audio_gates)
        logits = self.fc(torch.sigmoid(g) * c)
        out_c = (c / 2) @ self.fc.weight.T + self.fc.bias / 2
        out_g = logits - out_c
        out_a, out_v = _ordered(out_g, out_c, self.audio_gates)
        return FusionOutput(logits, out_a, out_v)


FUSIONS = {"sum": SumFusion, "concat": ConcatFusion, "film": FiLMFusion, "gated": GatedFusion}


def build_fusion(kind: str, dim_a: int, dim_v: int, classes: int, *, hidden: int = 512) -> nn.Module:
    """One of ``FUSIONS`` (sum | concat | film | gated) from (B, dim_a), (B, dim_v) to ``classes``."""
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion {kind!r}; choose from {sorted(FUSIONS)}")
    return FUSIONS[kind](dim_a, dim_v, classes, hidden=hidden)


# The OGM-GE classifier ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TwoEncoderConfig:
    """Audio ResNet-18 on (1, F, T) spectrograms, visual ResNet-18 on frames, one fusion head
    (OGM-GE's public setting: both encoders ResNet-18, concat fusion)."""

    classes: int = 6                 # CREMA-D: 6 emotions
    fusion: str = "concat"           # sum | concat | film | gated
    width: int = 64                  # ResNet stem width (8 * width features per modality)
    audio_channels: int = 1
    visual_channels: int = 3
    hidden: int = 512                # gated fusion's projection size

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"TwoEncoderConfig.fusion must be one of {sorted(FUSIONS)}, got {self.fusion!r}")
        if self.classes < 2 or self.width < 1:
            raise ValueError(f"TwoEncoderConfig: classes >= 2 and width >= 1 ({self.classes}, {self.width})")


class TwoEncoderClassifier(nn.Module):
    """audio (B, 1, F, T), visual (B, 3, H, W) or (B, S, 3, H, W) frames (pooled over S) ->
    ``FusionOutput`` (logits, out_a, out_v), each (B, classes). Encoders: ``audio_net``, ``visual_net``."""

    def __init__(self, config: TwoEncoderConfig = TwoEncoderConfig()):
        super().__init__()
        self.config = c = config
        self.audio_net = ResNet2d(ResNet2dConfig(in_channels=c.audio_channels, width=c.width))
        self.visual_net = ResNet2d(ResNet2dConfig(in_channels=c.visual_channels, width=c.width))
        self.fusion = build_fusion(c.fusion, 8 * c.width, 8 * c.width, c.classes, hidden=c.hidden)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> FusionOutput:
        a = self.audio_net(audio).mean((-2, -1))
        frames = visual.shape[1] if visual.dim() == 5 else 1
        v = self.visual_net(visual.flatten(0, 1) if visual.dim() == 5 else visual).mean((-2, -1))
        v = v.view(-1, frames, v.shape[-1]).mean(1)
        return self.fusion(a, v)


def _build(*, weights=None, **kw) -> TwoEncoderClassifier:
    model = TwoEncoderClassifier(TwoEncoderConfig(**kw))
    return load_state_dict_file(model, weights) if weights is not None else model


def build_two_encoder(*, classes: int = 6, fusion: str = "concat", weights=None, **kw) -> TwoEncoderClassifier:
    """OGM-GE's classifier: two ResNet-18 encoders and a fusion head."""
    return _build(classes=classes, fusion=fusion, weights=weights, **kw)


def two_encoder_tiny(*, classes: int = 6, fusion: str = "concat", weights=None, **kw) -> TwoEncoderClassifier:
    """The same layout at width 8 (64 features per modality) for CPU tests and demos."""
    return _build(classes=classes, fusion=fusion, weights=weights, **{"width": 8, "hidden": 64, **kw})
