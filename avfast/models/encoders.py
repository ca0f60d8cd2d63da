"""Video and audio backbones of seed 001 (dub-augmented pretraining) and the projection head.

- ``X3D``: the X3D family (Feichtenhofer, CVPR 2020): a stem (spatial 1x3x3 conv + depthwise
  temporal 5x1x1 conv), four stages of inverted bottlenecks (1x1x1 expand by 2.25, depthwise 3x3x3
  with squeeze-excitation on every other block and swish, 1x1x1 project), a 1x1x1 ``conv5`` to
  2.25 x the last width, global average pooling and a linear "pre-logits" layer. ``x3d_m`` is
  X3D-M (16 x 224^2 input), ``x3d_xs``/``x3d_s`` the same network for 4/13 x 160^2 input,
  ``x3d_tiny`` a narrow, shallow variant for CPU runs and tests.
- ``AcousticResNet``: the audio pathway of Audiovisual SlowFast (Xiao et al., 2020) used as a
  standalone ResNet-50 on log-mel spectrograms: a separable ``[9x1, 1x9]`` stem with 32 channels,
  bottleneck stages ``[3, 4, 6, 3]`` whose 3x3 convolution is factorised into a time (3x1) and a
  frequency (1x3) convolution, widths half of ResNet-50 so the clip feature is 1024-d. Input
  ``(B, C, n_mels, frames)``; seed 001 feeds pseudo-stereo, ``C = 2``.
- ``ProjectionHead``: the MLP head (Linear -> BN -> ReLU -> Linear) to the 512-d contrastive space.

``norm="batch"`` (the papers) or ``"group"`` (batch-size independent: one process and N processes
give identical results, useful on CPU where SyncBatchNorm is not available).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "X3D", "X3DConfig", "x3d_m", "x3d_s", "x3d_xs", "x3d_tiny",
    "AcousticResNet", "AcousticResNetConfig", "acoustic_resnet50", "acoustic_resnet_tiny",
    "ProjectionHead", "build_video_encoder", "build_audio_encoder", "VIDEO_ENCODERS", "AUDIO_ENCODERS",
]


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    if kind == "group":
        groups = math.gcd(channels, 8)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be 'batch' or 'group' ({kind!r} given)")


def _zero_last_norm(norm: nn.Module) -> None:
    # residual branches start as identity (Goyal et al.): the block's last norm scales by zero
    if getattr(norm, "weight", None) is not None:
        nn.init.zeros_(norm.weight)


def _init_conv_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------- X3D

class _SqueezeExcite3d(nn.Module):
    def __init__(self, channels: int, ratio: float):
        super().__init__()
        hidden = _round_width(channels, ratio)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class _X3DBlock(nn.Module):
    """Inverted bottleneck: 1x1x1 expand, depthwise 3x3x3 (+SE, swish), 1x1x1 project, residual."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float, norm: str):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = _norm(norm, dim_inner, 3)
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, 3, stride=(1, stride, stride), padding=1,
                                groups=dim_inner, bias=False)
        self.norm_b = _norm(norm, dim_inner, 3)
        self.se = _SqueezeExcite3d(dim_inner, se_ratio) if se_ratio > 0 else nn.Identity()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = _norm(norm, dim_out, 3)
        _zero_last_norm(self.norm_c)
        self.shortcut = None
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False), _norm(norm, dim_out, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm_a(self.conv_a(x)))
        y = nn.functional.silu(self.se(self.norm_b(self.conv_b(y))))
        y = self.norm_c(self.conv_c(y))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def _round_width(width: float, multiplier: float, divisor: int = 8) -> int:
    """X3D's channel rounding: ``width * multiplier`` to a multiple of ``divisor`` (not below 90 %)."""
    width *= multiplier
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * width:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class X3DConfig:
    """Widths and depths of an X3D network (defaults: X3D-M)."""

    stem_dim: int = 24
    stage_dims: tuple[int, ...] = (24, 48, 96, 192)
    stage_depths: tuple[int, ...] = (3, 5, 11, 7)  # X3D's (1, 2, 5, 3) x depth factor 2.2, rounded up
    expansion: float = 2.25
    se_ratio: float = 0.0625
    conv5_expansion: float = 2.25
    feature_dim: int = 2048  # X3D's pre-logits layer; seed 001's controlled models use 1024
    norm: str = "batch"


class X3D(nn.Module):
    """X3D video encoder: ``(B, 3, T, H, W)`` float -> ``(B, feature_dim)`` clip features.

    Any ``T >= 1`` and ``H, W`` (spatial stride 32 in total); X3D-M is trained on 16 x 224 x 224.
    """

    def __init__(self, config: X3DConfig = X3DConfig()):
        super().__init__()
        c = config
        self.config = c
        self.stem = nn.Sequential(
            nn.Conv3d(3, c.stem_dim, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(c.stem_dim, c.stem_dim, (5, 1, 1), padding=(2, 0, 0), groups=c.stem_dim, bias=False),
            _norm(c.norm, c.stem_dim, 3), nn.ReLU(inplace=True))
        stages, dim_in = [], c.stem_dim
        for dim_out, depth in zip(c.stage_dims, c.stage_depths):
            blocks = []
            for i in range(depth):
                se = c.se_ratio if i % 2 == 0 else 0.0  # SE on every other block, starting with the first
                blocks.append(_X3DBlock(dim_in, int(c.expansion * dim_out), dim_out, 2 if i == 0 else 1, se, c.norm))
                dim_in = dim_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        conv5_dim = int(c.conv5_expansion * dim_in)
        self.conv5 = nn.Sequential(nn.Conv3d(dim_in, conv5_dim, 1, bias=False), _norm(c.norm, conv5_dim, 3),
                                   nn.ReLU(inplace=True))
        self.pre_logits = nn.Linear(conv5_dim, c.feature_dim, bias=False)
        self.feature_dim = c.feature_dim
        _init_conv_linear(self)
        for block in self.modules():
            if isinstance(block, _X3DBlock):
                _zero_last_norm(block.norm_c)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"X3D expects video (B, 3, T, H, W); got shape {tuple(video.shape)}")
        x = self.conv5(self.stages(self.stem(video)))
        return torch.relu(self.pre_logits(x.mean(dim=(2, 3, 4))))


def x3d_m(**overrides) -> X3D:
    """X3D-M: 2.97M parameters up to the 2048-d pre-logits layer (3.79M with a 400-class classifier); input 16 x 224^2."""
    return X3D(X3DConfig(**overrides))


def x3d_s(**overrides) -> X3D:
    """X3D-S: X3D-M's network, meant for 13 x 160^2 input."""
    return X3D(X3DConfig(**overrides))


def x3d_xs(**overrides) -> X3D:
    """X3D-XS: X3D-M's network, meant for 4 x 160^2 input."""
    return X3D(X3DConfig(**overrides))


def x3d_tiny(**overrides) -> X3D:
    """A narrow one-block-per-stage X3D for CPU demos and tests (47k parameters, 128-d features)."""
    kw = dict(stem_dim=8, stage_dims=(8, 16, 32, 48), stage_depths=(1, 1, 1, 1), feature_dim=128)
    kw.update(overrides)
    return X3D(X3DConfig(**kw))


# --------------------------------------------------------------------------------- acoustic ResNet

class _AudioBottleneck(nn.Module):
    """1x1, separable (3x1 time then 1x3 frequency), 1x1 (x4) bottleneck on (B, C, freq, time)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, norm: str):
        super().__init__()
        self.conv_a = nn.Conv2d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = _norm(norm, dim_inner, 2)
        self.conv_t = nn.Conv2d(dim_inner, dim_inner, (1, 3), stride=(1, stride), padding=(0, 1), bias=False)
        self.conv_f = nn.Conv2d(dim_inner, dim_inner, (3, 1), stride=(stride, 1), padding=(1, 0), bias=False)
        self.norm_b = _norm(norm, dim_inner, 2)
        self.conv_c = nn.Conv2d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = _norm(norm, dim_out, 2)
        _zero_last_norm(self.norm_c)
        self.shortcut = None
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(dim_in, dim_out, 1, stride=stride, bias=False),
                                          _norm(norm, dim_out, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm_a(self.conv_a(x)))
        y = torch.relu(self.norm_b(self.conv_f(self.conv_t(y))))
        y = self.norm_c(self.conv_c(y))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


@dataclass(frozen=True)
class AcousticResNetConfig:
    """Widths and depths of an acoustic ResNet (defaults: the acoustic ResNet-50, 1024-d output)."""

    in_channels: int = 2  # seed 001: pseudo-stereo mel
    stem_dim: int = 32
    stage_inner: tuple[int, ...] = (32, 64, 128, 256)
    stage_depths: tuple[int, ...] = (3, 4, 6, 3)
    expansion: int = 4
    norm: str = "batch"
    freq_coords: bool = False  # add a mel-position input channel (absolute pitch survives global pooling)


class AcousticResNet(nn.Module):
    """Acoustic ResNet on mel spectrograms: ``(B, C, n_mels, frames)`` -> ``(B, feature_dim)``.

    ``(B, n_mels, frames)`` (mono) is accepted and duplicated to ``in_channels`` (pseudo-stereo,
    as seed 001 does for mono downstream data). ``feature_dim = stage_inner[-1] * expansion``.
    ``freq_coords=True`` appends a channel holding each row's mel position (-1 .. 1, CoordConv):
    global pooling of a small network otherwise keeps little of a sound's absolute pitch.
    """

    def __init__(self, config: AcousticResNetConfig = AcousticResNetConfig()):
        super().__init__()
        c = config
        self.config = c
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels + c.freq_coords, c.stem_dim, (1, 9), padding=(0, 4), bias=False),  # 9 frames
            nn.Conv2d(c.stem_dim, c.stem_dim, (9, 1), padding=(4, 0), bias=False),  # 9 bins in frequency
            _norm(c.norm, c.stem_dim, 2), nn.ReLU(inplace=True))
        stages, dim_in = [], c.stem_dim
        for s, (inner, depth) in enumerate(zip(c.stage_inner, c.stage_depths)):
            blocks = []
            for i in range(depth):
                stride = 2 if (i == 0 and s > 0) else 1
                blocks.append(_AudioBottleneck(dim_in, inner, inner * c.expansion, stride, c.norm))
                dim_in = inner * c.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = dim_in
        _init_conv_linear(self)
        for block in self.modules():
            if isinstance(block, _AudioBottleneck):
                _zero_last_norm(block.norm_c)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() == 3:
            mel = mel.unsqueeze(1).expand(-1, self.config.in_channels, -1, -1)
        if mel.dim() != 4 or mel.shape[1] != self.config.in_channels:
            raise ValueError(f"AcousticResNet expects mel (B, {self.config.in_channels}, n_mels, frames) "
                             f"or (B, n_mels, frames); got shape {tuple(mel.shape)}")
        if self.config.freq_coords:
            ramp = torch.linspace(-1, 1, mel.shape[2], dtype=mel.dtype, device=mel.device)
            mel = torch.cat([mel, ramp.view(1, 1, -1, 1).expand(mel.shape[0], 1, -1, mel.shape[3])], dim=1)
        return self.stages(self.stem(mel)).mean(dim=(2, 3))


def acoustic_resnet50(**overrides) -> AcousticResNet:
    """Acoustic ResNet-50 (AVSlowFast's audio pathway as a standalone network), 1024-d features."""
    return AcousticResNet(AcousticResNetConfig(**overrides))


def acoustic_resnet_tiny(**overrides) -> AcousticResNet:
    """A narrow one-block-per-stage acoustic ResNet for CPU demos and tests (128-d features)."""
    kw = dict(stem_dim=8, stage_inner=(8, 16, 24, 32), stage_depths=(1, 1, 1, 1))
    kw.update(overrides)
    return AcousticResNet(AcousticResNetConfig(**kw))


# ------------------------------------------------------------------------------------------- heads

class ProjectionHead(nn.Module):
    """MLP head ``(B, in_dim) -> (B, out_dim)``: Linear -> BN -> ReLU -> Linear (SimCLR-style).

    ``hidden_dim`` defaults to ``in_dim``; ``norm="group"`` uses LayerNorm instead of BatchNorm
    (independent of the batch split across processes).
    """

    def __init__(self, in_dim: int, out_dim: int = 512, hidden_dim: int | None = None, norm: str = "batch"):
        super().__init__()
        hidden = hidden_dim or in_dim
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group' ({norm!r} given)")
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden) if norm == "batch" else nn.LayerNorm(hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        _init_conv_linear(self)
        nn.init.kaiming_normal_(self.net[0].weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


VIDEO_ENCODERS = {"x3d_m": x3d_m, "x3d_s": x3d_s, "x3d_xs": x3d_xs, "x3d_tiny": x3d_tiny}
AUDIO_ENCODERS = {"acoustic_resnet50": acoustic_resnet50, "acoustic_resnet_tiny": acoustic_resnet_tiny}


def _build(registry: dict, kind: str, name: str, overrides: dict) -> nn.Module:
    if name not in registry:
        raise ValueError(f"unknown {kind} encoder {name!r}; choose one of {sorted(registry)}")
    return registry[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def build_video_encoder(name: str, **overrides) -> X3D:
    """A video encoder by name (``x3d_m``, ``x3d_s``, ``x3d_xs``, ``x3d_tiny``); overrides go to its config."""
    return _build(VIDEO_ENCODERS, "video", name, overrides)


def build_audio_encoder(name: str, **overrides) -> AcousticResNet:
    """An audio encoder by name (``acoustic_resnet50``, ``acoustic_resnet_tiny``)."""
    return _build(AUDIO_ENCODERS, "audio", name, overrides)


def stage_shapes(model: nn.Module, x: torch.Tensor) -> Sequence[tuple[int, ...]]:
    """Output shapes after the stem and each stage of an ``X3D`` or ``AcousticResNet`` for input ``x``."""
    shapes = []
    with torch.no_grad():
        h = model.stem(x if not isinstance(model, AcousticResNet) or x.dim() == 4 else x.unsqueeze(1))
        shapes.append(tuple(h.shape))
        for stage in model.stages:
            h = stage(h)
            shapes.append(tuple(h.shape))
    return shapes
