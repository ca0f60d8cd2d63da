"""Spectral-flux onset envelope and peak picking on batched tensors (CPU and GPU), as librosa.

Seed 004 computes "audio onsets using librosa's onset detection function with precomputed onset
envelopes". ``onset_strength`` is ``librosa.onset.onset_strength`` with its defaults (mel power
spectrogram, n_fft 2048, 128 slaney mels, constant padding, ``power_to_db`` with top_db 80, lag 1,
positive flux averaged over mels, shifted by ``lag + n_fft // (2 hop)`` frames) computed through
``avfast.ops.mel_spectrogram`` for a whole batch; ``onset_detect`` is ``librosa.onset.onset_detect``
(min-max normalised envelope, ``util.peak_pick`` with the 30 ms / 100 ms windows, 30 ms wait).

>>> import torch
>>> wave = torch.zeros(2, 16000); wave[:, 8000] = 1.0
>>> onset_detect(wave).nonzero()[:, 1].tolist()   # one click at 0.5 s -> frame 50
[50, 50]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from avfast.ops._mel_config import MelConfig

__all__ = ["onset_strength", "onset_strength_from_db", "peak_pick", "onset_detect", "onset_config"]


def onset_config(sample_rate: int = 16000, hop_length: int = 160, n_fft: int = 2048, n_mels: int = 128) -> MelConfig:
    """The mel settings of ``librosa.feature.melspectrogram`` + ``power_to_db`` (librosa's onset defaults)."""
    return MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                     mel_scale="slaney", norm="slaney", pad_mode="constant", log="db", log_eps=1e-10,
                     top_db=80.0, layout="mel_time")


def onset_strength_from_db(S: torch.Tensor, *, lag: int = 1, n_fft: int = 2048, hop_length: int = 160,
                           center: bool = True) -> torch.Tensor:
    """Spectral flux of a dB mel spectrogram ``S (B, n_mels, frames)`` -> envelope ``(B, frames)``.

    mean over mels of max(0, S[t] - S[t - lag]), shifted right by ``lag (+ n_fft // (2 hop) when
    center)`` zeros and cut to ``frames`` (librosa's ``onset_strength(S=...)``)."""
    if S.dim() != 3:
        raise ValueError(f"onset_strength_from_db: S must be (B, n_mels, frames), got {tuple(S.shape)}")
    if lag < 1:
        raise ValueError(f"lag must be >= 1 ({lag} given)")
    flux = (S[..., lag:] - S[..., :-lag]).clamp_min(0).mean(1)
    pad = lag + (n_fft // (2 * hop_length) if center else 0)
    env = F.pad(flux, (pad, 0))
    return env[..., :S.shape[-1]] if center else env


def onset_strength(wave: torch.Tensor, *, sample_rate: int = 16000, hop_length: int = 160, n_fft: int = 2048,
                   n_mels: int = 128, lag: int = 1, backend: str = "auto") -> torch.Tensor:
    """librosa's ``onset_strength(y=wave, sr=sample_rate, hop_length=hop_length)`` for a batch.

    wave (B, T) or (T,) float -> envelope (B, 1 + T // hop) (or (frames,)) float32, on wave's device."""
    if wave.dim() not in (1, 2) or not wave.is_floating_point():
        raise ValueError(f"onset_strength: wave must be a float (T,) or (B, T) tensor, "
                         f"got {wave.dtype} {tuple(wave.shape)}")
    from avfast.ops import mel_spectrogram

    single = wave.dim() == 1
    cfg = onset_config(sample_rate, hop_length, n_fft, n_mels)
    S = mel_spectrogram(wave.reshape(-1, wave.shape[-1]).float(), cfg, backend=backend)
    env = onset_strength_from_db(S, lag=lag, n_fft=n_fft, hop_length=hop_length)
    return env[0] if single else env


def _window_max(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """max of x[t - before : t + after] (clipped at the edges) along the last axis."""
    padded = F.pad(x, (before, after - 1), value=float("-inf"))
    return padded.unfold(-1, before + after, 1).amax(-1)


def _window_mean(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """mean of x[t - before : t + after] (clipped at the edges) along the last axis."""
    n = x.shape[-1]
    c = F.pad(x.double().cumsum(-1), (1, 0))
    t = torch.arange(n, device=x.device)
    lo, hi = (t - before).clamp_min(0), (t + after).clamp_max(n)
    return ((c[..., hi] - c[..., lo]) / (hi - lo)).to(x.dtype)


def peak_pick(x: torch.Tensor, *, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> torch.Tensor:
    """librosa's ``util.peak_pick(sparse=False)`` on the last axis of ``x (..., n)`` -> bool (..., n).

    n is a peak when x[n] == max(x[n - pre_max : n + post_max]), x[n] >= mean(x[n - pre_avg : n +
    post_avg]) + delta, and no peak was kept in the ``wait`` frames before it (greedy, left to right)."""
    if min(pre_max, pre_avg, wait) < 0 or delta < 0 or post_max <= 0 or post_avg <= 0:
        raise ValueError("peak_pick: pre_max, pre_avg, wait, delta must be >= 0 and post_max, post_avg > 0")
    cand = (x == _window_max(x, pre_max, post_max)) & (x >= _window_mean(x, pre_avg, post_avg) + delta)
    if wait == 0 or not bool(cand.any()):
        return cand
    flat = cand.reshape(-1, cand.shape[-1])
    keep = torch.zeros_like(flat)
    last = torch.full((flat.shape[0],), -wait - 1, dtype=torch.long, device=x.device)
    # only frames where some row has a candidate need the sequential wait rule
    for t in flat.any(0).nonzero().flatten().tolist():
        k = flat[:, t] & (t - last > wait)
        keep[:, t] = k
        last = torch.where(k, t, last)
    return keep.view_as(cand)


def onset_detect(wave: torch.Tensor | None = None, *, onset_envelope: torch.Tensor | None = None,
                 sample_rate: int = 16000, hop_length: int = 160, normalize: bool = True,
                 backend: str = "auto", **peak_kwargs) -> torch.Tensor:
    """librosa's ``onset_detect(sparse=False)`` for a batch: bool onset frames ``(B, frames)``.

    Give ``wave (B, T)`` or a precomputed ``onset_envelope (B, frames)``. Peak-picking defaults are
    librosa's, in frames: pre_max 30 ms, post_max 1, pre_avg 100 ms, post_avg 100 ms + 1, wait
    30 ms, delta 0.07. A row whose envelope is all zero (or not finite) has no onsets."""
    if onset_envelope is None:
        if wave is None:
            raise ValueError("onset_detect: give wave or onset_envelope")
        onset_envelope = onset_strength(wave, sample_rate=sample_rate, hop_length=hop_length, backend=backend)
    env = onset_envelope.float()
    single = env.dim() == 1
    env = env.reshape(-1, env.shape[-1])
    if normalize:
        env = env - env.amin(-1, keepdim=True)
        env = env / (env.amax(-1, keepdim=True) + torch.finfo(env.dtype).tiny)
    frames = lambda sec, plus=0: int(math.ceil(sec * sample_rate // hop_length + plus))  # noqa: E731
    kw = dict(pre_max=frames(0.03), post_max=frames(0.0, 1), pre_avg=frames(0.10), post_avg=frames(0.10, 1),
              wait=frames(0.03), delta=0.07)
    kw.update(peak_kwargs)
    peaks = peak_pick(env, **kw)
    dead = ~(env != 0).any(-1) | ~torch.isfinite(env).all(-1)
    peaks = peaks & ~dead[:, None]
    return peaks[0] if single else peaks
