"""SpecAugment mask drawing for the mel spectrogram: per sample, from the caller's generator.

Masks are drawn in Python and handed to every backend as ``(B, n, 2)`` int64 [start, end) tensors,
so all backends mask identically for one seed.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class MelMasks(NamedTuple):
    """Mask positions of one call: ``freq`` (B, n_freq_masks, 2) mel rows, ``time`` (B, n_time_masks, 2)
    output frames, each [start, end); an empty mask has start == end."""

    freq: torch.Tensor
    time: torch.Tensor


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Device random numbers are drawn on: the generator's, else CPU (the default generator)."""
    return generator.device if generator is not None else torch.device("cpu")


def interval_hits(intervals: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: position inside any [start, end) of ``intervals`` (B, n, 2) (all False for n = 0)."""
    pos = torch.arange(size, device=intervals.device)
    return ((pos >= intervals[..., :1]) & (pos < intervals[..., 1:])).any(1)


def max_width(spec: int | float, axis: torch.Tensor) -> torch.Tensor:
    """Largest mask width per sample: ``spec`` bins (int) or a fraction of ``axis`` (float in (0, 1])."""
    if isinstance(spec, float):
        return torch.floor(axis.double() * spec).long()
    return torch.full_like(axis, int(spec))


def draw_intervals(count: int, spec: int | float, axis: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``(B, count, 2)`` intervals: width uniform in {0..min(max, axis)}, start uniform in {0..axis - width}.

    ``axis`` (B,) int64 is each sample's valid extent (mel rows, or valid output frames).
    """
    batch = axis.shape[0]
    if count == 0 or batch == 0:
        return torch.zeros(batch, count, 2, dtype=torch.long)
    u = torch.rand(batch, count, 2, generator=generator, dtype=torch.float64, device=generator_device(generator)).cpu()
    axis = axis.cpu().long()[:, None]
    top = torch.minimum(max_width(spec, axis), axis)
    width = torch.minimum(torch.floor(u[..., 0] * (top + 1)).long(), top)
    start = torch.minimum(torch.floor(u[..., 1] * (axis - width + 1)).long(), axis - width)
    return torch.stack([start, start + width], -1)


def draw_masks(batch_valid_frames: torch.Tensor, n_mels: int, *, freq_masks: int, freq_mask_max: int | float,
               time_masks: int, time_mask_max: int | float, generator: torch.Generator | None) -> MelMasks:
    """Frequency then time masks for a batch whose samples have ``batch_valid_frames`` (B,) frames."""
    frames = batch_valid_frames.cpu().long()
    mels = torch.full_like(frames, n_mels)
    freq = draw_intervals(freq_masks, freq_mask_max, mels, generator)
    time = draw_intervals(time_masks, time_mask_max, frames, generator)
    return MelMasks(freq, time)
