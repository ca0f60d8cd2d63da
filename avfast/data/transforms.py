"""Clip transforms: video (random short-side scale, crop, flip, normalise) and audio (mel via ``avfast.ops``).

Both run on whatever device their input is on: frames decoded on the GPU (DALI) are augmented there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["VideoAugment", "audio_features"]

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def _rand(generator: torch.Generator | None) -> float:
    """One uniform draw in [0, 1) from ``generator`` (on its own device, CPU or CUDA)."""
    return float(torch.rand((), generator=generator, device=generator.device if generator is not None else None))


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * _rand(generator)


@dataclass(frozen=True)
class VideoAugment:
    """uint8 frames (T, C, H, W) -> float (C, T, crop, crop), normalised.

    Training (``train=True``): scale so the short side is uniform in ``short_side`` (seed 001:
    256-320), random ``crop`` x ``crop`` (224), horizontal flip with probability 1/2. Evaluation:
    short side ``short_side[0]``, centre crop, no flip. The crop window is cut from the decoded frame
    first and only that window is resized (same result as resize-then-crop, far less work); uint8
    bilinear antialiased resizing keeps CPU cost low.

    Equivalent reference::

        x = F.interpolate(frames.float(), scale_factor=s / min(H, W), mode="bilinear", antialias=True)
        x = x[..., y0:y0 + crop, x0:x0 + crop].flip(-1)  # flip when drawn
        x = ((x / 255 - mean) / std).permute(1, 0, 2, 3)
    """

    short_side: tuple[int, int] = (256, 320)
    crop: int = 224
    flip: bool = True
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    train: bool = True

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (T, 3, H, W) ({tuple(frames.shape)} given)")
        lo, hi = self.short_side
        if not self.crop <= lo <= hi:
            raise ValueError(f"need crop <= short_side[0] <= short_side[1] ({self.crop}, {self.short_side} given)")
        h, w = frames.shape[-2:]
        target = _uniform(lo, hi, generator) if self.train else float(lo)
        scale = target / min(h, w)
        win = self.crop / scale  # crop window in source pixels
        if self.train:
            y0 = _uniform(0, h - win, generator)
            x0 = _uniform(0, w - win, generator)
        else:
            y0, x0 = (h - win) / 2, (w - win) / 2
        top, left = int(round(y0)), int(round(x0))
        size = max(1, int(round(win)))
        window = frames[..., top:top + size, left:left + size]
        if window.device.type == "cpu" and window.dtype == torch.uint8:
            window = window.contiguous(memory_format=torch.channels_last)  # fast uint8 resize path
        else:
            window = window.float()
        out = F.interpolate(window, size=(self.crop, self.crop), mode="bilinear", antialias=size > self.crop,
                            align_corners=False)
        if self.train and self.flip and _rand(generator) < 0.5:
            out = out.flip(-1)
        mean = torch.tensor(self.mean, device=out.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=out.device).view(1, 3, 1, 1) * 255
        out = (out.float() - mean) / std
        return out.permute(1, 0, 2, 3).contiguous()  # (C, T, crop, crop)


def audio_features(wave: torch.Tensor, preset: str = "dub", masks: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Log-mel of one clip's wave (C, T) -> (C, n_mels, frames) with ``avfast.ops.mel_spectrogram``.

    The preset's SpecAugment masks (``dub``: time and frequency masks up to 50 % of each axis) are
    drawn from ``generator`` when ``masks``; the channels of one clip share their masks.
    """
    from avfast import ops

    if not hasattr(ops, "mel_spectrogram"):
        raise NotImplementedError("avfast.ops.mel_spectrogram is not in this build yet; use audio='wave'")
    config = ops.MelConfig.preset(preset, masks=masks)
    return ops.mel_spectrogram(wave.unsqueeze(0), config, generator=generator)[0]
