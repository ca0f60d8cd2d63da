"""Backbones of seed 004 (event-specific audio-visual fusion layers), exactly as the seed's Table 1.

- ``EventAudioNet`` (Table 1a): the ``event`` mel preset's 1000 x 80 log-mel read as 10 segments of
  100 frames, input ``(B, 1, 10, 100, 80)`` = (segment, time, mel); Conv3d layers whose first kernel
  axis is 1 (segments never mix): conv1 ... conv7 with the listed filters, kernels, strides and
  paddings give 10 x 50 x 80 ... 10 x 10 x 1.
  **Our reading of the "100 x 1" of fc8 / fc9**: they are 1 x 1 x 1 convolutions (512 filters) on the
  10 x 10 x 1 grid of conv7, whose 10 segments x 10 time positions are the 100 steps of the clip at
  10 Hz (one per 100 ms), and 1 is the collapsed mel axis. So the audio feature is 512 x 100 x 1: a
  512-d vector per 100 ms, on the same 10 Hz grid as the video network's 100 frames.
- ``EventVideoNet`` (Table 1b): torchvision's ``mc3_18`` layout on 100 x 112 x 112 (10 s at 10 fps),
  no temporal stride: conv1 (3,7,7) stem, conv2-conv5 two 3x3x3 basic blocks, conv6-conv20 three
  stages of (1,3,3) basic blocks whose first block has a (1,1,1) strided residual conv
  (res-conv8/13/18), then the (1,7,7) average pool: a 512-d vector per frame, ``(B, 100, 512)``.

BatchNorm + ReLU after every convolution (the seed); in a residual block the second conv's ReLU is
applied after the residual sum (as in mc3_18), and the residual conv is followed by BatchNorm only
(its ReLU is that same post-sum ReLU). ``width`` scales every filter count (1.0 = the table) for
CPU runs; ``segments`` / ``frames`` / ``frame_size`` shorten clips (the table: 10 / 100 / 112).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avfast.models.mit import load_state_dict_file

__all__ = ["EventBackboneConfig", "EventAudioNet", "EventVideoNet", "AUDIO_TABLE", "VIDEO_TABLE",
           "event_audio_net", "event_video_net", "layer_shapes"]

# (name, filters, kernel, stride, padding) of Table 1a; "maxpool" rows have filters None.
AUDIO_TABLE = (
    ("conv1", 64, (1, 3, 3), (1, 2, 1), (0, 1, 1)),
    ("conv2", 64, (1, 3, 3), (1, 1, 2), (0, 1, 1)),
    ("maxpool2", None, (1, 1, 3), (1, 1, 2), (0, 0, 0)),
    ("conv3", 192, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("maxpool3", None, (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv4", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv5", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv6", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("maxpool6", None, (1, 3, 2), (1, 2, 2), (0, 0, 0)),
    ("conv7", 512, (1, 4, 4), (1, 1, 1), (0, 1, 0)),
    ("fc8", 512, (1, 1, 1), (1, 1, 1), (0, 0, 0)),
    ("fc9", 512, (1, 1, 1), (1, 1, 1), (0, 0, 0)),
)

# Table 1b: (name, filters, kernel, stride, padding); a res-conv row is the residual conv of the block
# made of the two rows before it.
VIDEO_TABLE = (
    ("conv1", 64, (3, 7, 7), (1, 2, 2), (1, 3, 3)),
    ("conv2", 64, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("conv3", 64, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("conv4", 64, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("conv5", 64, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("conv6", 128, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv7", 128, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("res-conv8", 128, (1, 1, 1), (1, 2, 2), (0, 0, 0)),
    ("conv9", 128, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv10", 128, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv11", 256, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv12", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("res-conv13", 256, (1, 1, 1), (1, 2, 2), (0, 0, 0)),
    ("conv14", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv15", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv16", 512, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv17", 512, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("res-conv18", 512, (1, 1, 1), (1, 2, 2), (0, 0, 0)),
    ("conv19", 512, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv20", 512, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
)


@dataclass(frozen=True)
class EventBackboneConfig:
    """Sizes of both backbones; defaults = the seed's Table 1 (10 s clips, 10 Hz feature grid)."""

    segments: int = 10           # audio: 1 s segments of the clip
    segment_frames: int = 100    # mel frames per segment (hop 10 ms)
    n_mels: int = 80
    frames: int = 100            # video frames (10 fps)
    frame_size: int = 112
    width: float = 1.0           # multiplies every filter count (1.0 = the table)
    norm_momentum: float = 0.1

    def __post_init__(self):
        if min(self.segments, self.frames) < 1:
            raise ValueError(f"segments and frames must be >= 1 ({self.segments}, {self.frames} given)")
        if self.segment_frames != 100 or self.n_mels != 80:
            raise ValueError("the audio network's table needs segments of 100 frames x 80 mels "
                             f"({self.segment_frames} x {self.n_mels} given): conv7 maps 11 x 4 to 10 x 1")
        if self.frame_size < 16 or self.frame_size % 16:
            raise ValueError(f"frame_size must be a multiple of 16 ({self.frame_size} given): four stride-2 stages")
        if not self.width > 0:
            raise ValueError(f"width must be > 0 ({self.width} given)")

    def filters(self, n: int) -> int:
        return max(1, round(n * self.width))

    @property
    def dim(self) -> int:
        """Feature size of both networks (512 x width)."""
        return self.filters(512)

    @property
    def steps(self) -> int:
        """Audio feature steps: 10 per segment (10 Hz)."""
        return self.segments * 10


def _conv_bn(cin: int, cout: int, k, s, p, *, relu: bool = True, momentum: float = 0.1) -> nn.Sequential:
    layers = [nn.Conv3d(cin, cout, k, s, p, bias=False), nn.BatchNorm3d(cout, momentum=momentum)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EventAudioNet(nn.Module):
    """Table 1a. ``mel (B, 1000, 80)`` or ``(B, 1, 10, 100, 80)`` -> ``(B, 100, 512)`` (10 Hz steps).

    Layers are attributes named as the table's rows (``conv1`` ... ``fc9``)."""

    def __init__(self, config: EventBackboneConfig = EventBackboneConfig()):
        super().__init__()
        self.config = config
        cin = 1
        for name, filters, k, s, p in AUDIO_TABLE:
            if filters is None:
                setattr(self, name, nn.MaxPool3d(k, s, p))
            else:
                cout = config.filters(filters)
                setattr(self, name, _conv_bn(cin, cout, k, s, p, momentum=config.norm_momentum))
                cin = cout
        self.names = tuple(row[0] for row in AUDIO_TABLE)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(mel, None)[0]

    def _check_row(self, name: str) -> None:
        if name not in self.names:
            raise ValueError(f"EventAudioNet has no row {name!r} ({', '.join(self.names)})")

    def tap_shape(self, name: str) -> tuple[int, int, int]:
        """(channels, time positions per segment, mel positions) of row ``name``'s output."""
        self._check_row(name)
        time, mels, channels = 100, 80, 1
        for row, filters, k, s, p in AUDIO_TABLE:
            time = (time + 2 * p[1] - k[1]) // s[1] + 1
            mels = (mels + 2 * p[2] - k[2]) // s[2] + 1
            channels = self.config.filters(filters) if filters is not None else channels
            if row == name:
                return channels, time, mels

    def forward_with_tap(self, mel: torch.Tensor, tap: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (the ``(B, S * 10, 512)`` steps, row ``tap``'s output ``(B, C, S, time, mels)`` or None)."""
        c = self.config
        if mel.dim() == 3:
            if mel.shape[1:] != (c.segments * 100, 80):
                raise ValueError(f"EventAudioNet: mel must be (B, {c.segments * 100}, 80), got {tuple(mel.shape)}")
            mel = mel.reshape(mel.shape[0], 1, c.segments, 100, 80)
        if mel.dim() != 5 or mel.shape[1:] != (1, c.segments, 100, 80):
            raise ValueError(f"EventAudioNet: input must be (B, 1, {c.segments}, 100, 80), got {tuple(mel.shape)}")
        if tap is not None:
            self._check_row(tap)
        x, tapped = mel, None
        for name in self.names:
            x = getattr(self, name)(x)
            if name == tap:
                tapped = x
        # (B, C, S, 10, 1) -> (B, S * 10, C): the 100 x 1 grid of fc9
        return x.flatten(2).transpose(1, 2), tapped


class _BasicBlock(nn.Module):
    """Two convs with BN (+ReLU after the first and after the residual sum), optional residual conv."""

    def __init__(self, rows, cin: int, config: EventBackboneConfig):
        super().__init__()
        (_, f1, k1, s1, p1), (_, f2, k2, s2, p2) = rows[:2]
        cout = config.filters(f1)
        m = config.norm_momentum
        self.conv_a = _conv_bn(cin, cout, k1, s1, p1, momentum=m)
        self.conv_b = _conv_bn(cout, config.filters(f2), k2, s2, p2, relu=False, momentum=m)
        self.residual = None
        if len(rows) == 3:
            _, f3, k3, s3, p3 = rows[2]
            self.residual = _conv_bn(cin, config.filters(f3), k3, s3, p3, relu=False, momentum=m)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.residual is None else self.residual(x)
        return self.relu(self.conv_b(self.conv_a(x)) + skip)


def _video_blocks():
    """Table 1b's rows after conv1 grouped into basic blocks: [conv, conv(, res-conv)] ..."""
    rows, blocks, i = VIDEO_TABLE[1:], [], 0
    while i < len(rows):
        take = 3 if i + 2 < len(rows) and rows[i + 2][0].startswith("res-") else 2
        blocks.append(rows[i:i + take])
        i += take
    return blocks


class EventVideoNet(nn.Module):
    """Table 1b (mc3_18 without temporal stride). ``frames (B, 3, T, H, W)`` -> ``(B, T, 512)``."""

    def __init__(self, config: EventBackboneConfig = EventBackboneConfig()):
        super().__init__()
        self.config = config
        _, f, k, s, p = VIDEO_TABLE[0]
        self.conv1 = _conv_bn(3, config.filters(f), k, s, p, momentum=config.norm_momentum)
        cin = config.filters(f)
        blocks = []
        for rows in _video_blocks():
            blocks.append(_BasicBlock(rows, cin, config))
            cin = config.filters(rows[1][1])
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d((None, 1, 1))  # (1, 7, 7) at 112 x 112

    def block_names(self) -> list[tuple[str, ...]]:
        """The table's row names of each block, in order."""
        return [tuple(r[0] for r in rows) for rows in _video_blocks()]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        c = self.config
        if frames.dim() != 5 or frames.shape[1] != 3 or frames.shape[3:] != (c.frame_size, c.frame_size):
            raise ValueError(f"EventVideoNet: frames must be (B, 3, T, {c.frame_size}, {c.frame_size}), "
                             f"got {tuple(frames.shape)}")
        x = self.blocks(self.conv1(frames))
        return self.pool(x).flatten(2).transpose(1, 2)

    def feature_map(self, frames: torch.Tensor) -> torch.Tensor:
        """The conv20 map before pooling, ``(B, C, T, H/16, W/16)`` (for localisation)."""
        return self.blocks(self.conv1(frames))


def event_audio_net(*, weights=None, **overrides) -> EventAudioNet:
    """Table 1a's audio network (``weights``: a local state_dict file, loaded strictly)."""
    model = EventAudioNet(EventBackboneConfig(**overrides))
    return load_state_dict_file(model, weights) if weights is not None else model


def event_video_net(*, weights=None, **overrides) -> EventVideoNet:
    """Table 1b's video network (``weights``: a local state_dict file, loaded strictly)."""
    model = EventVideoNet(EventBackboneConfig(**overrides))
    return load_state_dict_file(model, weights) if weights is not None else model


def layer_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch and channels) of every row of the model's table for input ``x``.

    Works on the meta device. A video block reports its first conv, its second conv (after the
    residual sum) and its residual conv under the table's names; ``avgpool`` the pooled map."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook(name):
        def record(_m, _i, out):
            shapes[name] = tuple(out.shape[2:])
        return record

    if isinstance(model, EventAudioNet):
        for name in model.names:
            handles.append(getattr(model, name).register_forward_hook(hook(name)))
    else:
        handles.append(model.conv1.register_forward_hook(hook("conv1")))
        for block, names in zip(model.blocks, model.block_names()):
            handles.append(block.conv_a.register_forward_hook(hook(names[0])))
            handles.append(block.register_forward_hook(hook(names[1])))
            if block.residual is not None:
                handles.append(block.residual.register_forward_hook(hook(names[2])))
        handles.append(model.pool.register_forward_hook(hook("avgpool")))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes
