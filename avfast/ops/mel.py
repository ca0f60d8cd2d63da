"""Fused mel spectrogram with per-sample SpecAugment masks: reference, custom op, dispatch.

``mel_spectrogram(wave, config)`` replaces the chain torch.stft -> |X|^2 -> mel matmul -> log / dB ->
normalise -> pad/crop -> frequency/time masking. Backends: ``torch`` (this file, the ground truth,
with backward), ``cpp`` (csrc/mel.cpp), ``triton`` (kernels/mel.py), ``cuda`` (csrc/cuda/mel.cu).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from avfast._backend import cpp_op, cuda_op, register_backend, select, triton_backend
from avfast.ops._mel_config import PRESETS, MelConfig, as_config
from avfast.ops._mel_filters import mel_bands, mel_filterbank, window
from avfast.ops._mel_masks import MelMasks, draw_masks, generator_device, interval_hits

__all__ = ["MelConfig", "MelMasks", "mel_spectrogram", "mel_spectrogram_reference", "MEL_PRESETS"]

OP = "mel_spectrogram"
MEL_PRESETS = tuple(PRESETS)


# Constant tensors of a config (cached per device) ------------------------------------------------


@functools.lru_cache(maxsize=64)
def _constants(cfg: MelConfig, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(window (win,), filter bank (n_freq, n_mels), bands (n_mels, 2) int64) of ``cfg`` on ``device``."""
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.f_min), cfg.fmax, cfg.mel_scale, cfg.norm)
    win = window(cfg.window, cfg.win, kaldi=cfg.kaldi)
    return win.to(device, dtype), fb.to(device, dtype), mel_bands(fb).to(device)


def constants(cfg: MelConfig, device: torch.device, dtype: torch.dtype = torch.float32):
    """Window, filter bank and non-zero bands of ``cfg`` (see ``_constants``); keys exclude masks."""
    key = dataclasses.replace(cfg, masks=False, check_finite=False, dither=0.0)
    return _constants(key, torch.device(device), dtype)


# Reference (torch.stft chain) ---------------------------------------------------------------------


def _power_frames(x: Tensor, cfg: MelConfig, win: Tensor) -> Tensor:
    """``|X| ** power`` of ``x`` (N, T): (N, n_freq, frames)."""
    if cfg.kaldi:
        T, n = x.shape[-1], cfg.frames(x.shape[-1])
        if not cfg.snip_edges:  # kaldi reflects symmetrically: x[-1] = x[0], x[T] = x[T - 1]
            left, right = max(-cfg.offset, 0), max((n - 1) * cfg.hop + cfg.offset + cfg.win - T, 0)
            x = torch.cat([x[:, :left].flip(-1), x, x[:, T - right:].flip(-1)], -1)[:, max(cfg.offset, 0):]
        frames = x.unfold(-1, cfg.win, cfg.hop)[:, :n]
        if cfg.remove_dc:
            frames = frames - frames.mean(-1, keepdim=True)
        if cfg.preemphasis:
            frames = frames - cfg.preemphasis * torch.cat([frames[..., :1], frames[..., :-1]], -1)
        spec = torch.fft.rfft(frames * win, n=cfg.n_fft).transpose(1, 2)
    else:
        spec = torch.stft(x, cfg.n_fft, cfg.hop, cfg.win, win, center=cfg.center, pad_mode=cfg.pad_mode,
                          return_complex=True)
    power = spec.real.square() + spec.imag.square()
    return power if cfg.power == 2.0 else power.pow(cfg.power / 2)


def _log(mel: Tensor, cfg: MelConfig) -> Tensor:
    if cfg.log == "log":
        return torch.log(torch.clamp(mel + cfg.log_offset, min=cfg.log_eps))
    if cfg.log == "db":
        return 10.0 * torch.log10(torch.clamp(mel, min=cfg.log_eps))
    return mel


def _masked_value(y: Tensor, valid: Tensor, cfg: MelConfig) -> Tensor:
    """Value written into masks: ``mask_value`` or the mean of each (sample, channel) over valid frames."""
    if cfg.mask_value != "mean":
        return torch.full_like(y[..., :1, :1], float(cfg.mask_value))
    count = (valid.clamp(min=1) * y.shape[-2]).to(y.dtype)[:, None, None, None]
    return torch.where(valid[:, None, None, None] > 0, y.sum((-2, -1), keepdim=True) / count, torch.zeros(()))


def _finish(y: Tensor, valid: Tensor, cfg: MelConfig, n_out: int, masks: MelMasks | None) -> Tensor:
    """top_db, pad/crop, masks, normalisation, layout of log-mel ``y`` (B, C, n_mels, frames)."""
    frames = y.shape[-1]
    if n_out > frames:
        y = F.pad(y, (0, n_out - frames))
    y = y[..., :n_out]
    pad = torch.arange(n_out, device=y.device)[None, :] >= valid[:, None]  # (B, F)
    pad = pad[:, None, None, :]
    if cfg.top_db is not None:
        peak = y.masked_fill(pad, -math.inf).amax((1, 2, 3), keepdim=True)
        y = torch.maximum(y, peak - cfg.top_db)
    y = y.masked_fill(pad, 0.0)
    if masks is not None and (masks.freq.shape[1] or masks.time.shape[1]):
        fill = _masked_value(y, valid, cfg)
        hit = interval_hits(masks.freq, cfg.n_mels)[:, None, :, None] | interval_hits(masks.time, n_out)[:, None, None, :]
        y = torch.where(hit & ~pad, fill, y)
    y = y.masked_fill(pad, cfg.pad_value)
    if cfg.mean != 0.0 or cfg.std != 1.0:
        y = (y - cfg.mean) / cfg.std
    return y.transpose(-1, -2) if cfg.layout == "time_mel" else y


def mel_spectrogram_reference(wave: Tensor, config: MelConfig | str = "event", *, lengths: Tensor | None = None,
                              masks: MelMasks | None = None, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """Plain-torch mel spectrogram (the ground truth): torch.stft (or kaldi framing) -> power -> mel
    -> log/dB -> top_db -> pad/crop -> masks -> normalise. Differentiable w.r.t. ``wave``.

    Args:
        wave: (B, T) or (B, C, T) float; dither is not applied here.
        lengths: (B,) valid samples per item, or None (all T).
        masks: the positions to mask (``MelMasks``), or None.
        out_dtype: float32 (the op's contract); float64 for gradcheck.
    Returns:
        float32 (B, [C,] n_mels, frames) (``layout="time_mel"``: frames and n_mels swapped).
    """
    cfg = as_config(config)
    squeeze = wave.dim() == 2
    x = wave[:, None] if squeeze else wave
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    B, C, T = x.shape
    win, fb, _ = constants(cfg, x.device, x.dtype)
    n_full = cfg.frames(T)
    if lengths is None:
        power = (_power_frames(x.reshape(B * C, T), cfg, win).reshape(B, C, cfg.n_freq, -1) if B * C
                 else x.new_zeros(B, C, cfg.n_freq, n_full))
        valid = torch.full((B,), n_full, dtype=torch.long, device=x.device)
    else:
        items = []
        for b in range(B):
            p = _power_frames(x[b, :, :int(lengths[b])], cfg, win)
            items.append(F.pad(p, (0, n_full - p.shape[-1])))
        power = torch.stack(items) if items else x.new_zeros(0, C, cfg.n_freq, n_full)
        valid = torch.tensor([cfg.frames(int(n)) for n in lengths.tolist()], dtype=torch.long, device=x.device)
    mel = torch.matmul(fb.T, power)
    y = _log(mel, cfg)
    out = _finish(y, valid, cfg, cfg.out_frames(T), masks)
    out = out.to(out_dtype)
    return out[:, 0] if squeeze else out


# Custom op: flat arguments, one per config field that reaches the kernels ------------------------


_FLAT_FIELDS = ("sample_rate", "n_fft", "win_length", "hop_length", "f_min", "f_max", "n_mels", "window", "center",
                "pad_mode", "power", "norm", "mel_scale", "kaldi", "snip_edges", "preemphasis", "remove_dc", "log",
                "log_eps", "log_offset", "top_db", "mean", "std", "target_frames", "pad_value", "layout", "mask_value")


def _flat(cfg: MelConfig) -> dict:
    """Config fields as schema-friendly scalars (None -> sentinel, "mean" mask value -> NaN)."""
    return dict(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win, hop_length=cfg.hop,
                f_min=float(cfg.f_min), f_max=cfg.fmax, n_mels=cfg.n_mels, window=cfg.window, center=cfg.center,
                pad_mode=cfg.pad_mode, power=float(cfg.power), norm=cfg.norm or "none", mel_scale=cfg.mel_scale,
                kaldi=cfg.kaldi, snip_edges=cfg.snip_edges, preemphasis=float(cfg.preemphasis),
                remove_dc=cfg.remove_dc, log=cfg.log, log_eps=float(cfg.log_eps), log_offset=float(cfg.log_offset),
                top_db=-1.0 if cfg.top_db is None else float(cfg.top_db), mean=float(cfg.mean), std=float(cfg.std),
                target_frames=cfg.target_frames or 0, pad_value=float(cfg.pad_value),
                layout=cfg.layout, mask_value=math.nan if cfg.mask_value == "mean" else float(cfg.mask_value))


def _unflat(kw: dict) -> MelConfig:
    kw = dict(kw)
    kw["norm"] = None if kw["norm"] == "none" else kw["norm"]
    kw["top_db"] = None if kw["top_db"] < 0 else kw["top_db"]
    kw["target_frames"] = kw["target_frames"] or None
    kw["mask_value"] = "mean" if math.isnan(kw["mask_value"]) else kw["mask_value"]
    return MelConfig(**kw)


def _out_shape(wave: Tensor, cfg: MelConfig) -> tuple[int, ...]:
    B, C, T = wave.shape
    n_out = cfg.out_frames(T)
    return (B, C, n_out, cfg.n_mels) if cfg.layout == "time_mel" else (B, C, cfg.n_mels, n_out)


@torch.library.custom_op("avfast::mel_spectrogram", mutates_args=())
def _mel_op(wave: Tensor, lengths: Tensor, freq_masks: Tensor, time_masks: Tensor, sample_rate: int, n_fft: int,
            win_length: int, hop_length: int, f_min: float, f_max: float, n_mels: int, window: str, center: bool,
            pad_mode: str, power: float, norm: str, mel_scale: str, kaldi: bool, snip_edges: bool,
            preemphasis: float, remove_dc: bool, log: str, log_eps: float, log_offset: float, top_db: float,
            mean: float, std: float, target_frames: int, pad_value: float, layout: str, mask_value: float,
            backend: str) -> Tensor:
    kw = {k: v for k, v in locals().items() if k in _FLAT_FIELDS}
    cfg = _unflat(kw)
    from avfast._backend import get_backend

    return get_backend(OP, backend).fn(wave, lengths, MelMasks(freq_masks, time_masks), cfg)


@_mel_op.register_fake
def _mel_fake(wave, lengths, freq_masks, time_masks, *args):
    kw = dict(zip(_FLAT_FIELDS, args))
    return wave.new_empty(_out_shape(wave, _unflat(kw)), dtype=torch.float32)


@torch.library.custom_op("avfast::mel_spectrogram_backward", mutates_args=())
def _mel_backward_op(grad: Tensor, wave: Tensor, lengths: Tensor, freq_masks: Tensor, time_masks: Tensor,
                     config: list[float], strings: str) -> Tensor:
    cfg = _unpack(config, strings)
    # torch.func.vjp: plain autograd is switched off below a custom op's autograd layer.
    _, vjp = torch.func.vjp(lambda w: _reference_flat(w, lengths, MelMasks(freq_masks, time_masks), cfg), wave)
    return vjp(grad)[0]


@_mel_backward_op.register_fake
def _mel_backward_fake(grad, wave, *args):
    return torch.empty_like(wave)


_STRING_FIELDS = ("window", "pad_mode", "norm", "mel_scale", "log", "layout")


def _pack(kw: dict) -> tuple[list[float], str]:
    """Flat fields as (numbers, ";"-joined strings) for the backward op's short schema."""
    numbers = [float(kw[k]) for k in _FLAT_FIELDS if k not in _STRING_FIELDS]
    return numbers, ";".join(kw[k] for k in _STRING_FIELDS)


def _unpack(numbers: list[float], strings: str) -> MelConfig:
    kw = dict(zip(_STRING_FIELDS, strings.split(";")))
    ints = {"sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "target_frames"}
    bools = {"center", "kaldi", "snip_edges", "remove_dc"}
    for k, v in zip([k for k in _FLAT_FIELDS if k not in _STRING_FIELDS], numbers):
        kw[k] = int(v) if k in ints else bool(v) if k in bools else v
    return _unflat(kw)


def _setup_context(ctx, inputs, output):
    wave, lengths, freq_masks, time_masks, *args = inputs
    ctx.save_for_backward(wave, lengths, freq_masks, time_masks)
    ctx.packed = _pack(dict(zip(_FLAT_FIELDS, args)))


def _backward(ctx, grad):
    wave, lengths, freq_masks, time_masks = ctx.saved_tensors
    g = _mel_backward_op(grad.contiguous(), wave, lengths, freq_masks, time_masks, *ctx.packed)
    return (g, None, None, None) + (None,) * (len(_FLAT_FIELDS) + 1)


_mel_op.register_autograd(_backward, setup_context=_setup_context)


# Backends ---------------------------------------------------------------------------------------


def _reference_flat(wave: Tensor, lengths: Tensor, masks: MelMasks, cfg: MelConfig) -> Tensor:
    full = bool((lengths == wave.shape[-1]).all()) if lengths.numel() else True
    return mel_spectrogram_reference(wave, cfg, lengths=None if full else lengths, masks=masks)


register_backend(OP, "torch", priority=0, autograd=True,
                 description="torch.stft chain (kaldi framing via unfold + rfft); reference, with backward")(_reference_flat)


@register_backend(OP, "cpp", priority=20, devices=("cpu",), dtypes=(torch.float16, torch.float32, torch.float64),
                  available=cpp_op("mel_spectrogram_cpu"),
                  description="fused C++: frames -> window -> real FFT -> sparse mel -> log -> masks, one pass per block of frames")
def _mel_cpp(wave: Tensor, lengths: Tensor, masks: MelMasks, cfg: MelConfig) -> Tensor:
    # Default: ATen's batched rfft per block of frames (measured faster on both presets);
    # AVFAST_MEL_FFT=own picks our radix-2 block FFT (powers of two only), kept for comparison.
    fft = {"own": 1, "aten": 2}.get(os.environ.get("AVFAST_MEL_FFT", ""), 0)
    return torch.ops.avfast_C.mel_spectrogram_cpu(*fused_args(wave, lengths, masks, cfg), fft)


def _triton_check(wave, lengths=None, n_mels=128, **_):
    """The target's shared memory must hold the kernel's tiles for this many mel bands."""
    from avfast.kernels.mel import tiles

    why = tiles(n_mels, wave.device)[1]
    return [why] if why else []


@triton_backend(OP, priority=30, dtypes=(torch.float16, torch.float32, torch.float64), check=_triton_check,
                description="Triton: DFT as a tiled matmul + power + mel + log in one kernel, then a per-sample finish kernel")
def _mel_triton(wave: Tensor, lengths: Tensor, masks: MelMasks, cfg: MelConfig) -> Tensor:
    from avfast.kernels.mel import mel_spectrogram_triton

    return _run_fused(mel_spectrogram_triton, wave, lengths, masks, cfg)


@register_backend(OP, "cuda", priority=40, devices=("cuda",), dtypes=(torch.float16, torch.float32, torch.float64),
                  available=cuda_op("mel_spectrogram_cuda"),
                  description="CUDA C++: shared-memory DFT tiles + mel + log, then a per-sample finish kernel")
def _mel_cuda(wave: Tensor, lengths: Tensor, masks: MelMasks, cfg: MelConfig) -> Tensor:
    return _run_fused(torch.ops.avfast_C.mel_spectrogram_cuda, wave, lengths, masks, cfg)


_LOG_IDS = {"none": 0, "log": 1, "db": 2}
_BOUNDARY_IDS = {"constant": 0, "reflect": 1, "replicate": 2, "symmetric": 3}


def fused_args(wave: Tensor, lengths: Tensor, masks: MelMasks, cfg: MelConfig) -> tuple:
    """The argument list every fused kernel takes (same order in C++, Triton and CUDA):

    wave (B, C, T) contiguous, lengths (B,) int64, frames (B,) int64 valid frames, window (win,) f32,
    filter bank (n_freq, n_mels) f32, bands (n_mels, 2) int64, freq masks (B, nf, 2) int64, time masks
    (B, nt, 2) int64, then n_fft, hop, offset, boundary id, n_out, preemphasis, remove_dc, power,
    log id, log_eps, log_offset, top_db (< 0: off), mean, std, pad_value, mask_value (NaN: mean),
    time_major.
    """
    win, fb, bands = constants(cfg, wave.device)
    lengths = lengths.to(wave.device, torch.long).contiguous()
    frames = _valid_frames(lengths, cfg)
    return (wave.contiguous(), lengths, frames, win, fb, bands,
            masks.freq.to(wave.device, torch.long).contiguous(), masks.time.to(wave.device, torch.long).contiguous(),
            cfg.n_fft, cfg.hop, cfg.offset, _BOUNDARY_IDS[cfg.boundary], cfg.out_frames(wave.shape[-1]),
            float(cfg.preemphasis), bool(cfg.remove_dc), float(cfg.power), _LOG_IDS[cfg.log], float(cfg.log_eps),
            float(cfg.log_offset), -1.0 if cfg.top_db is None else float(cfg.top_db), float(cfg.mean),
            float(cfg.std), float(cfg.pad_value), math.nan if cfg.mask_value == "mean" else float(cfg.mask_value),
            cfg.layout == "time_mel")


def _run_fused(kernel, wave, lengths, masks, cfg):
    return kernel(*fused_args(wave, lengths, masks, cfg))


def _valid_frames(lengths: Tensor, cfg: MelConfig) -> Tensor:
    """(B,) frames each sample yields (tensor arithmetic: no host sync)."""
    return cfg.frames(lengths).contiguous()


# Public function --------------------------------------------------------------------------------


def _validate(wave: Tensor, cfg: MelConfig, lengths: Tensor | None) -> None:
    if not isinstance(wave, Tensor):
        raise TypeError(f"mel_spectrogram: wave must be a tensor ({type(wave).__name__} given)")
    if wave.dim() not in (2, 3):
        raise ValueError(f"mel_spectrogram: wave must be (B, T) or (B, C, T) (shape {tuple(wave.shape)} given)")
    if wave.dtype not in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        raise TypeError(f"mel_spectrogram: wave must be float16/32/64 (dtype {wave.dtype} given); convert integer "
                        "PCM with wave.float() / 32768")
    T = wave.shape[-1]
    if T < cfg.min_length():
        raise ValueError(f"mel_spectrogram: wave of {T} samples is too short for this config (needs >= "
                         f"{cfg.min_length()}: n_fft={cfg.n_fft}, win_length={cfg.win}, center={cfg.center}, "
                         f"kaldi={cfg.kaldi})")
    if lengths is not None:
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.shape[0] != wave.shape[0]:
            raise ValueError(f"mel_spectrogram: lengths must be a (B,) = ({wave.shape[0]},) tensor "
                             f"({getattr(lengths, 'shape', type(lengths))} given)")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"mel_spectrogram: lengths must be an integer tensor (dtype {lengths.dtype} given)")
        if not torch.compiler.is_compiling() and lengths.numel():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < cfg.min_length() or hi > T:
                raise ValueError(f"mel_spectrogram: lengths must lie in [{cfg.min_length()}, T={T}] "
                                 f"(min {lo}, max {hi} given); the lower bound is the shortest wave giving a frame")
    if cfg.check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(wave).all()):
        raise ValueError("mel_spectrogram: wave holds NaN or inf (check_finite=True)")


def _given_masks(masks, batch: int, device: torch.device) -> MelMasks:
    """Caller's masks checked (a ``MelMasks`` or (freq, time) pair of (B, n, 2) integer tensors), on ``device``."""
    if not (isinstance(masks, tuple) and len(masks) == 2 and all(isinstance(m, Tensor) for m in masks)):
        raise TypeError(f"mel_spectrogram: masks must be MelMasks(freq, time) of tensors ({type(masks).__name__} given)")
    out = []
    for name, m in zip(("freq", "time"), masks):
        if m.dim() != 3 or m.shape[0] != batch or m.shape[2] != 2:
            raise ValueError(f"mel_spectrogram: masks.{name} must be (B={batch}, n, 2) [start, end) "
                             f"(shape {tuple(m.shape)} given)")
        if m.dtype.is_floating_point or m.dtype == torch.bool:
            raise TypeError(f"mel_spectrogram: masks.{name} must be an integer tensor (dtype {m.dtype} given)")
        out.append(m.to(device, torch.long).contiguous())
    return MelMasks(*out)


def mel_spectrogram(wave: Tensor, config: MelConfig | str = "event", *, lengths: Tensor | None = None,
                    generator: torch.Generator | None = None, masks: MelMasks | None = None,
                    return_masks: bool = False, backend: str = "auto") -> Tensor | tuple[Tensor, MelMasks]:
    """Mel spectrogram with per-sample SpecAugment masks in one fused pass.

    .. devices:: CPU CUDA
    .. properties:: Autograd (``torch`` backend) TorchScript-free; torch.compile(fullgraph=True)

    Args:
        wave: (B, T) or (B, C, T) float16/32/64 audio. Channels share each sample's masks and top_db.
        config: a ``MelConfig`` or a preset name: ``"ast"``, ``"dub"``, ``"event"``
            (``MelConfig.preset("dub", masks=True)`` turns the preset's masks on).
        lengths: (B,) int valid samples per item; frames past a sample's end hold ``pad_value`` and
            time masks stay inside its valid frames. None: every item is T samples long.
        generator: draws masks and dither (per sample), so a seed reproduces them on every backend.
        masks: given ``MelMasks`` (freq (B, nf, 2) mel rows, time (B, nt, 2) output frames, [start, end),
            int64) applied instead of drawing (e.g. drawn by data workers with
            ``avfast.data.device_mel_masks``); they apply whether or not ``config.masks`` is on.
        return_masks: also return ``MelMasks`` (freq (B, nf, 2) mel rows, time (B, nt, 2) frames, [start, end)).
        backend: ``"auto"`` | ``"torch"`` | ``"cpp"`` | ``"triton"`` | ``"cuda"``.
    Returns:
        float32 (B, [C,] n_mels, frames), or (B, [C,] frames, n_mels) for ``layout="time_mel"``;
        frames = ``target_frames`` or the frames of T samples.

    Equivalent reference code (torchaudio names)::

        spec = torch.stft(wave, n_fft, hop, win, hann_window(win), center=True, return_complex=True)
        mel = fb.T @ spec.abs() ** 2                    # fb: melscale_fbanks(n_fft // 2 + 1, ...)
        y = 10 * log10(clamp(mel, min=log_eps)); y = max(y, y.amax(per sample) - top_db)
        y[..., frames >= valid] = pad_value; y[masked rows / frames] = mask_value
        y = (y - mean) / std
    """
    cfg = as_config(config)
    _validate(wave, cfg, lengths)
    x = wave[:, None] if wave.dim() == 2 else wave
    if x.dtype == torch.bfloat16:
        x = x.float()
    B, C, T = x.shape
    if lengths is None:
        lens = torch.full((B,), T, dtype=torch.long, device=x.device)
    else:
        lens = lengths.to(x.device, torch.long)
    if cfg.dither > 0:
        x = x + cfg.dither * torch.randn(x.shape, generator=generator, device=generator_device(generator)).to(x)
    if masks is not None:
        masks = _given_masks(masks, B, x.device)
    elif cfg.masks:
        n_out = cfg.out_frames(T)
        frames = torch.clamp(_valid_frames(lens, cfg), max=n_out)
        masks = draw_masks(frames, cfg.n_mels, freq_masks=cfg.freq_masks, freq_mask_max=cfg.freq_mask_max,
                           time_masks=cfg.time_masks, time_mask_max=cfg.time_mask_max, generator=generator)
        masks = MelMasks(masks.freq.to(x.device), masks.time.to(x.device))
    else:
        empty = torch.zeros(B, 0, 2, dtype=torch.long, device=x.device)
        masks = MelMasks(empty, empty)
    impl = select(OP, x, lens, backend=backend, n_mels=cfg.n_mels)
    out = _mel_op(x, lens, masks.freq, masks.time, **_flat(cfg), backend=impl.name)
    if wave.dim() == 2:
        out = out[:, 0]
    return (out, masks) if return_masks else out
