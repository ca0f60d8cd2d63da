"""nn.Modules of the mel front end: ``MelSpectrogram``, ``SpecAugment`` and AST's augmentations."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from avfast.ops._mel_masks import MelMasks, draw_masks, generator_device, interval_hits
from avfast.ops.mel import MelConfig, as_config, mel_spectrogram

__all__ = ["MelSpectrogram", "SpecAugment", "AstNoise", "Mixup"]


class MelSpectrogram(nn.Module):
    """``avfast.ops.mel_spectrogram`` as a module; masks are drawn only in training mode.

    Args:
        config: a ``MelConfig`` or preset name; ``overrides`` replace its fields
            (``MelSpectrogram("dub", masks=True)``).
    Shapes: (B, T) -> (B, n_mels, F); (B, C, T) -> (B, C, n_mels, F) (or frames first for "time_mel").
    """

    def __init__(self, config: MelConfig | str = "event", *, backend: str = "auto", **overrides):
        super().__init__()
        self.config = dataclasses.replace(as_config(config), **overrides)
        self.backend = backend

    def forward(self, wave: Tensor, lengths: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.config if self.training or not self.config.masks else dataclasses.replace(self.config, masks=False)
        return mel_spectrogram(wave, cfg, lengths=lengths, generator=generator, backend=self.backend)

    def extra_repr(self) -> str:
        c = self.config
        return f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, hop={c.hop}, n_mels={c.n_mels}, log={c.log!r}, masks={c.masks}"


class SpecAugment(nn.Module):
    """Per-sample frequency and time masks on an existing spectrogram (training mode only).

    Widths are uniform in {0..max} (an int: bins; a float in (0, 1]: fraction of the axis, of each
    sample's valid frames in time), starts uniform; drawn from ``generator``. Input (B, [C,] n_mels, F),
    optional ``frame_lengths`` (B,) keeps time masks inside the valid frames. ``mask_value``: a float or "mean".
    """

    def __init__(self, freq_masks: int = 1, freq_mask_max: int | float = 0.5, time_masks: int = 1,
                 time_mask_max: int | float = 0.5, mask_value: float | str = 0.0):
        super().__init__()
        self.freq_masks, self.freq_mask_max = freq_masks, freq_mask_max
        self.time_masks, self.time_mask_max = time_masks, time_mask_max
        self.mask_value = mask_value

    def forward(self, spec: Tensor, frame_lengths: Tensor | None = None, generator: torch.Generator | None = None,
                return_masks: bool = False):
        if not self.training:
            return (spec, None) if return_masks else spec
        B, n_mels, F = spec.shape[0], spec.shape[-2], spec.shape[-1]
        valid = frame_lengths if frame_lengths is not None else torch.full((B,), F, dtype=torch.long)
        masks = draw_masks(valid, n_mels, freq_masks=self.freq_masks, freq_mask_max=self.freq_mask_max,
                           time_masks=self.time_masks, time_mask_max=self.time_mask_max, generator=generator)
        masks = MelMasks(masks.freq.to(spec.device), masks.time.to(spec.device))
        hit = interval_hits(masks.freq, n_mels)[:, :, None] | interval_hits(masks.time, F)[:, None, :]
        hit = hit.reshape(B, *([1] * (spec.dim() - 3)), n_mels, F)
        fill = spec.mean((-2, -1), keepdim=True) if self.mask_value == "mean" else torch.tensor(float(self.mask_value))
        out = torch.where(hit, fill.to(spec), spec)
        return (out, masks) if return_masks else out


class AstNoise(nn.Module):
    """AST's noise augmentation: ``x + U(0,1) * u / 10`` (u ~ U(0,1) per sample), then a roll of the
    time axis by a shift uniform in [-10, 10] per sample. Input (B, F, n_mels) (``time_dim=1``) or any
    (B, ...) with ``time_dim``; training mode only."""

    def __init__(self, scale: float = 0.1, max_shift: int = 10, time_dim: int = 1):
        super().__init__()
        self.scale, self.max_shift, self.time_dim = scale, max_shift, time_dim

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training:
            return x
        B = x.shape[0]
        dev = generator_device(generator)
        amp = torch.rand(B, generator=generator, device=dev).to(x).view(B, *([1] * (x.dim() - 1)))
        noise = torch.rand(x.shape, generator=generator, device=dev).to(x)
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (B,), generator=generator, device=dev).tolist()
        y = x + noise * amp * self.scale
        return torch.stack([torch.roll(y[b], s, self.time_dim - 1) for b, s in enumerate(shifts)])


class Mixup(nn.Module):
    """AST-style mixup of waves: each item mixed with a random partner, ``lam ~ Beta(alpha, alpha)`` per
    item; returns (mixed waves, mixed labels, lam (B,)). Waves are centred (mean removed) first, as AST.
    Applied with probability ``p`` per batch; identity (lam = 1) otherwise or in eval mode."""

    def __init__(self, alpha: float = 10.0, p: float = 0.5):
        super().__init__()
        self.alpha, self.p = alpha, p

    def forward(self, wave: Tensor, labels: Tensor, generator: torch.Generator | None = None):
        B = wave.shape[0]
        lam = torch.ones(B, dtype=wave.dtype, device=wave.device)
        draw = torch.rand((), generator=generator, device=generator_device(generator)).item()
        if not self.training or draw >= self.p or B < 2:
            return wave, labels, lam
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=generator_device(generator)))
        rng = np.random.default_rng(seed)
        lam = torch.as_tensor(rng.beta(self.alpha, self.alpha, size=B), dtype=wave.dtype, device=wave.device)
        partner = torch.as_tensor(rng.permutation(B), device=wave.device)
        centred = wave - wave.mean(-1, keepdim=True)
        lw = lam.view(B, *([1] * (wave.dim() - 1)))
        mixed = lw * centred + (1 - lw) * centred[partner]
        ll = lam.view(B, *([1] * (labels.dim() - 1))).to(labels.dtype)
        return mixed, ll * labels + (1 - ll) * labels[partner], lam
