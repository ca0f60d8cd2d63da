"""ResNet-18 (2-D) built from code: the visual trunk of AVST and both encoders of OGM-GE's classifier.

No weights are downloaded: ``weights=`` loads a local ``state_dict`` file (strict; the error names
missing and unexpected keys). ``forward`` returns the last stage's maps (stride 32):
(N, C_in, H, W) -> (N, 8 * width, H / 32, W / 32), e.g. (N, 512, 14, 14) for 448 x 448 frames.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from avfast.models.mit import load_state_dict_file

__all__ = ["ResNet2dConfig", "ResNet2d", "resnet18", "resnet18_tiny"]


@dataclasses.dataclass(frozen=True)
class ResNet2dConfig:
    """ResNet sizes (defaults: ResNet-18 on RGB)."""

    in_channels: int = 3             # 3 for frames, 1 for spectrograms (OGM-GE's audio encoder)
    width: int = 64                  # stem width; stages have width, 2w, 4w, 8w channels
    blocks: tuple = (2, 2, 2, 2)     # basic blocks per stage (ResNet-18)

    def __post_init__(self):
        if self.in_channels < 1 or self.width < 1:
            raise ValueError(f"ResNet2dConfig: in_channels and width must be >= 1 ({self.in_channels}, {self.width})")
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"ResNet2dConfig.blocks must be 4 positive counts, got {self.blocks}")

    @property
    def out_channels(self) -> int:
        return 8 * self.width


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet2d(nn.Module):
    """Stem (7x7 conv stride 2, max-pool) and four stages; (N, C_in, H, W) -> (N, 8w, H/32, W/32)."""

    def __init__(self, config: ResNet2dConfig = ResNet2dConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], w
        for i, n in enumerate(config.blocks):
            cout = w * 2 ** i
            stages.append(nn.Sequential(*[_BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1)
                                          for j in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"ResNet2d: expected (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        return self.stages(self.stem(x))


def _build(*, weights=None, **kw) -> ResNet2d:
    model = ResNet2d(ResNet2dConfig(**kw))
    return load_state_dict_file(model, weights) if weights is not None else model


def resnet18(*, in_channels: int = 3, weights=None) -> ResNet2d:
    """ResNet-18 (width 64, 512 output channels); ``weights``: a local state_dict file."""
    return _build(in_channels=in_channels, weights=weights)


def resnet18_tiny(*, in_channels: int = 3, width: int = 8, weights=None) -> ResNet2d:
    """ResNet-18's layout at a CPU-sized width (tests, demos)."""
    return _build(in_channels=in_channels, width=width, weights=weights)
