"""Windows, mel filter banks and frame geometry of the mel spectrogram (shared by every backend).

Everything here is computed once per config in float64 and cached; backends receive the window
``(win_length,)`` and the filter bank ``(n_fft // 2 + 1, n_mels)`` as float32 tensors.
"""
from __future__ import annotations

import functools
import math

import torch

WINDOWS = ("hann", "hanning", "hamming", "povey", "rectangular")
MEL_SCALES = ("htk", "slaney", "kaldi")


def window(name: str, length: int, *, kaldi: bool = False) -> torch.Tensor:
    """Window of ``length`` samples (float64).

    ``hann``: periodic Hann (torch.hann_window, librosa); ``hanning``: symmetric Hann (kaldi);
    ``hamming``: symmetric 0.54/0.46 under kaldi framing, periodic otherwise (torch default);
    ``povey``: symmetric Hann ** 0.85 (kaldi); ``rectangular``: ones.
    """
    n = torch.arange(length, dtype=torch.float64)
    sym = max(length - 1, 1)
    if name == "hann":
        return torch.hann_window(length, periodic=True, dtype=torch.float64)
    if name == "hanning":
        return 0.5 - 0.5 * torch.cos(2 * math.pi * n / sym)
    if name == "hamming":
        return torch.hamming_window(length, periodic=not kaldi, dtype=torch.float64)
    if name == "povey":
        return (0.5 - 0.5 * torch.cos(2 * math.pi * n / sym)).pow(0.85)
    if name == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    raise ValueError(f"window must be one of {WINDOWS} ({name!r} given)")


def hz_to_mel(f: torch.Tensor, scale: str) -> torch.Tensor:
    """Hertz to mel on the ``htk`` (2595 log10), ``kaldi`` (1127 ln) or ``slaney`` scale."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    if scale == "kaldi":
        return 1127.0 * torch.log(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, lin)


def mel_to_hz(m: torch.Tensor, scale: str) -> torch.Tensor:
    """Inverse of ``hz_to_mel``."""
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale == "kaldi":
        return 700.0 * (torch.exp(m / 1127.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=64)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                   scale: str, norm: str | None) -> torch.Tensor:
    """Filter bank ``(n_fft // 2 + 1, n_mels)`` in float64.

    ``htk``/``slaney``: triangles linear in Hz between mel-spaced corners (torchaudio
    ``melscale_fbanks``, librosa ``filters.mel``); ``norm="slaney"`` scales each to unit area.
    ``kaldi``: triangles linear in mel over bins ``0 .. n_fft/2 - 1`` (the Nyquist row stays zero),
    as kaldi's ``MelBanks``.
    """
    n_freq = n_fft // 2 + 1
    freqs = torch.linspace(0, sample_rate / 2, n_freq, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor(f_min, dtype=torch.float64), scale), hz_to_mel(torch.tensor(f_max, dtype=torch.float64), scale)
    m_pts = torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64)
    if scale == "kaldi":
        mel = hz_to_mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft), scale)[:, None]
        left, center, right = m_pts[:-2], m_pts[1:-1], m_pts[2:]
        up, down = (mel - left) / (center - left), (right - mel) / (right - center)
        fb = torch.where((mel > left) & (mel < right), torch.where(mel <= center, up, down), torch.zeros(()))
        fb = torch.cat([fb, torch.zeros(1, n_mels, dtype=torch.float64)])
    else:
        f_pts = mel_to_hz(m_pts, scale)
        f_diff = f_pts[1:] - f_pts[:-1]
        slopes = f_pts[None, :] - freqs[:, None]
        down = -slopes[:, :-2] / f_diff[:-1]
        up = slopes[:, 2:] / f_diff[1:]
        fb = torch.clamp(torch.minimum(down, up), min=0.0)
    if norm == "slaney":
        if scale == "kaldi":
            raise ValueError("norm='slaney' is not defined for the kaldi mel scale")
        f_pts = mel_to_hz(m_pts, scale)
        fb = fb * (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None, :]
    elif norm is not None:
        raise ValueError(f"norm must be None or 'slaney' ({norm!r} given)")
    return fb


def mel_bands(fb: torch.Tensor) -> torch.Tensor:
    """``(n_mels, 2)`` int64 [first, last + 1) frequency rows where each filter is non-zero."""
    nz = fb != 0
    n_freq = fb.shape[0]
    idx = torch.arange(n_freq)[:, None].expand_as(nz)
    first = torch.where(nz, idx, n_freq).min(0).values
    last = torch.where(nz, idx + 1, 0).max(0).values
    return torch.stack([torch.minimum(first, last), last], 1)


def num_frames(length, *, n_fft: int, win_length: int, hop_length: int, kaldi: bool, center: bool,
               snip_edges: bool):
    """Frames of a wave of ``length`` samples (0 when it is too short).

    ``length`` is an int or an int64 tensor of lengths (elementwise, no host sync).
    """
    def at_least_zero(frames):
        return frames.clamp(min=0) if isinstance(frames, torch.Tensor) else max(frames, 0)

    if kaldi:
        if snip_edges:
            return at_least_zero(1 + (length - win_length) // hop_length)
        return (length + hop_length // 2) // hop_length
    if center:
        return 1 + length // hop_length
    return at_least_zero(1 + (length - n_fft) // hop_length)


def frame_offset(*, n_fft: int, win_length: int, hop_length: int, kaldi: bool, center: bool, snip_edges: bool) -> int:
    """Wave index of the first windowed sample of frame 0 (frame f reads ``f * hop + offset + k``).

    Where ``win_length < n_fft`` the windowed samples are placed at the start of the FFT buffer; the
    power spectrum does not depend on where the zero padding sits.
    """
    if kaldi:
        return 0 if snip_edges else hop_length // 2 - win_length // 2
    return (n_fft - win_length) // 2 - (n_fft // 2 if center else 0)
