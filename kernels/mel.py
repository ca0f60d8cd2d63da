"""Triton kernels of the fused mel spectrogram.

``_mel_fwd_kernel``: one program per (sample x channel, block of frames): gathers the frames from the
wave (boundary reflection per sample length, DC removal, pre-emphasis, window), takes the real DFT as
a tiled matmul against cos/sin tables, squares, projects on the mel bank (a second tl.dot) and writes
log / dB values of the valid frames. ``_mel_finish_kernel``: one program per sample: per-sample top_db,
padding, masks (value or mean), ``(y - mean) / std``.

``AVFAST_MEL_DFT_PRECISION=tf32`` runs the DFT and mel dots in TF32 (default "ieee": full fp32).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from avfast.kernels.utils import device_guard, fp32_dot_precision, interpreting, next_pow2, target_info


@triton.jit
def _frame_values(x_ptr, length, fr, n, hop, offset, win_len, ok_f, BOUNDARY: tl.constexpr):
    """(BLOCK_F, BLOCK_N) wave values x[fr * hop + offset + n] under the boundary rule (0: zeros,
    1: reflect, 2: replicate, 3: symmetric), zero where n >= win_len or the frame is not valid."""
    idx = fr[:, None] * hop + offset + n[None, :]
    ok = ok_f[:, None] & (n < win_len)[None, :]
    if BOUNDARY == 1:
        period = tl.maximum(2 * (length - 1), 1)
        j = ((idx % period) + period) % period
        idx = tl.where(j < length, j, period - j)
    elif BOUNDARY == 2:
        idx = tl.minimum(tl.maximum(idx, 0), length - 1)
    elif BOUNDARY == 3:
        period = 2 * length
        j = ((idx % period) + period) % period
        idx = tl.where(j < length, j, period - 1 - j)
    else:
        ok = ok & (idx >= 0) & (idx < length)
    return tl.load(x_ptr + idx, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _mel_fwd_kernel(x_ptr, len_ptr, frames_ptr, win_ptr, cos_ptr, sin_ptr, fb_ptr, out_ptr,
                    C, T, win_len, n_freq, n_mels, hop, offset, n_out, stride_m, stride_f,
                    preemphasis, power, log_eps, log_offset,
                    BOUNDARY: tl.constexpr, REMOVE_DC: tl.constexpr, PREEMPHASIS: tl.constexpr,
                    LOG_MODE: tl.constexpr, POWER2: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_F: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """y[f, m] = log(sum_k fb[k, m] |sum_n w[n] v[f, n] e^{-2 pi i k n / n_fft}|^power) for valid frames f."""
    bc = tl.program_id(0)
    b = bc // C
    length = tl.load(len_ptr + b)
    valid = tl.minimum(tl.load(frames_ptr + b), n_out)
    fr = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    ok_f = fr < valid
    x_row = x_ptr + bc.to(tl.int64) * T
    m = tl.arange(0, BLOCK_M)
    mean = tl.zeros([BLOCK_F], dtype=tl.float32)
    if REMOVE_DC:
        for n0 in range(0, win_len, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            mean += tl.sum(_frame_values(x_row, length, fr, n, hop, offset, win_len, ok_f, BOUNDARY), 1)
        mean = mean / win_len
    acc = tl.zeros([BLOCK_F, BLOCK_M], dtype=tl.float32)
    for k0 in range(0, n_freq, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        re = tl.zeros([BLOCK_F, BLOCK_K], dtype=tl.float32)
        im = tl.zeros([BLOCK_F, BLOCK_K], dtype=tl.float32)
        for n0 in range(0, win_len, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            in_win = n < win_len
            v = _frame_values(x_row, length, fr, n, hop, offset, win_len, ok_f, BOUNDARY) - mean[:, None]
            if PREEMPHASIS:
                prev = _frame_values(x_row, length, fr, tl.maximum(n - 1, 0), hop, offset, win_len, ok_f, BOUNDARY)
                v = v - preemphasis * (prev - mean[:, None])
            w = tl.load(win_ptr + n, mask=in_win, other=0.0)
            v = tl.where(in_win[None, :], v * w[None, :], 0.0)
            tab = n[:, None] * n_freq + k[None, :]
            ok_t = in_win[:, None] & (k < n_freq)[None, :]
            re += tl.dot(v, tl.load(cos_ptr + tab, mask=ok_t, other=0.0), input_precision=PRECISION)
            im += tl.dot(v, tl.load(sin_ptr + tab, mask=ok_t, other=0.0), input_precision=PRECISION)
        p = re * re + im * im
        if not POWER2:
            p = tl.where(p > 0, tl.exp(0.5 * power * tl.log(tl.maximum(p, 1e-30).to(tl.float32))), 0.0)
        fb = tl.load(fb_ptr + k[:, None] * n_mels + m[None, :], mask=(k < n_freq)[:, None] & (m < n_mels)[None, :],
                     other=0.0)
        acc += tl.dot(p, fb, input_precision=PRECISION)
    if LOG_MODE == 1:
        acc = tl.log(tl.maximum(acc + log_offset, log_eps))
    elif LOG_MODE == 2:
        acc = 4.342944819032518 * tl.log(tl.maximum(acc, log_eps))  # 10 * log10
    ptr = out_ptr + bc.to(tl.int64) * n_mels * n_out + m[None, :] * stride_m + fr[:, None] * stride_f
    tl.store(ptr, acc, mask=ok_f[:, None] & (m < n_mels)[None, :])


@triton.jit
def _interval_hits(ptr, count, pos):
    """pos inside any of the ``count`` [start, end) pairs at ``ptr``."""
    hit = pos < 0
    for i in range(0, count):
        hit = hit | ((pos >= tl.load(ptr + 2 * i)) & (pos < tl.load(ptr + 2 * i + 1)))
    return hit


@triton.jit
def _mel_finish_kernel(out_ptr, frames_ptr, fm_ptr, tm_ptr, C, n_mels, n_out, stride_m, stride_f, n_fm, n_tm,
                       top_db, mean, inv_std, pad_value, mask_value,
                       TOP_DB: tl.constexpr, MASK_MEAN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """Per sample b: z = pad_value past its frames, the mask value inside masks, else max(y, peak - top_db);
    out = (z - mean) * inv_std. The peak spans all channels; the "mean" mask value is per channel."""
    b = tl.program_id(0)
    valid = tl.minimum(tl.load(frames_ptr + b), n_out)
    plane = n_mels * n_out
    base = out_ptr + b.to(tl.int64) * C * plane
    floor = -float("inf")
    if TOP_DB:
        peak = tl.full([BLOCK_M, BLOCK_F], -float("inf"), tl.float32)
        for c in range(0, C):
            for m0 in range(0, n_mels, BLOCK_M):
                for f0 in range(0, valid, BLOCK_F):
                    m = m0 + tl.arange(0, BLOCK_M)
                    f = f0 + tl.arange(0, BLOCK_F)
                    ok = (m < n_mels)[:, None] & (f < valid)[None, :]
                    tile = tl.load(base + c * plane + m[:, None] * stride_m + f[None, :] * stride_f, mask=ok,
                                   other=-float("inf"))
                    peak = tl.maximum(peak, tile)
        floor = tl.max(tl.max(peak, 1), 0) - top_db
    for c in range(0, C):
        fill = mask_value
        if MASK_MEAN:
            total = tl.zeros([BLOCK_M, BLOCK_F], tl.float32)
            for m0 in range(0, n_mels, BLOCK_M):
                for f0 in range(0, valid, BLOCK_F):
                    m = m0 + tl.arange(0, BLOCK_M)
                    f = f0 + tl.arange(0, BLOCK_F)
                    ok = (m < n_mels)[:, None] & (f < valid)[None, :]
                    tile = tl.load(base + c * plane + m[:, None] * stride_m + f[None, :] * stride_f, mask=ok, other=0.0)
                    total += tl.where(ok, tl.maximum(tile, floor), 0.0)
            fill = tl.sum(tl.sum(total, 1), 0) / tl.maximum(valid * n_mels, 1).to(tl.float32)
        for m0 in range(0, n_mels, BLOCK_M):
            m = m0 + tl.arange(0, BLOCK_M)
            row_hit = _interval_hits(fm_ptr + b * n_fm * 2, n_fm, m)
            for f0 in range(0, n_out, BLOCK_F):
                f = f0 + tl.arange(0, BLOCK_F)
                col_hit = _interval_hits(tm_ptr + b * n_tm * 2, n_tm, f)
                ok = (m < n_mels)[:, None] & (f < n_out)[None, :]
                ptr = base + c * plane + m[:, None] * stride_m + f[None, :] * stride_f
                inside = (f < valid)[None, :] & ok
                y = tl.load(ptr, mask=inside, other=0.0)
                z = tl.where(row_hit[:, None] | col_hit[None, :], fill, tl.maximum(y, floor))
                z = tl.where((f < valid)[None, :], z, pad_value)
                tl.store(ptr, (z - mean) * inv_std, mask=ok)


@functools.lru_cache(maxsize=32)
def dft_tables(n_fft: int, win_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin of 2 pi k n / n_fft as (win_len, n_fft // 2 + 1) float32 (frame samples at the buffer start)."""
    n = torch.arange(win_len, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * ((n * k) % n_fft) / n_fft
    return torch.cos(angle).float().to(device), torch.sin(angle).float().to(device)


def dft_precision() -> str:
    """Precision of the DFT and mel dots: AVFAST_MEL_DFT_PRECISION ("ieee", "tf32x3" or "tf32") when set,
    else from torch.get_float32_matmul_precision() (``fp32_dot_precision``: "highest" -> "ieee")."""
    value = os.environ.get("AVFAST_MEL_DFT_PRECISION") or fp32_dot_precision()
    if value not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"AVFAST_MEL_DFT_PRECISION must be 'ieee', 'tf32x3' or 'tf32' ({value!r} given)")
    return value


# (BLOCK_F, BLOCK_N, BLOCK_K, num_stages), most preferred first
_TILES = ((64, 64, 64, 3), (64, 64, 64, 2), (32, 64, 64, 2), (32, 32, 64, 2), (16, 32, 32, 1))


def _shared_estimate(bf: int, bn: int, bk: int, bm: int, stages: int) -> int:
    """Shared bytes of the forward kernel (fp32): the frame and cos/sin tiles of the pipelined stages,
    the filter-bank tile and the power tile (matches the compiler within 1 KiB; benchmarks/compile_check.py)."""
    return 4 * (max(1, stages - 1) * (bf * bn + 2 * bn * bk) + bk * bm + bf * bk) + 2048


def tiles(n_mels: int, device) -> tuple[tuple[int, int, int, int], str | None]:
    """((BLOCK_F, BLOCK_N, BLOCK_K, num_stages), None) for the target, or (smallest, why it does not fit)."""
    bm = max(16, next_pow2(n_mels))
    if interpreting():
        return (16, 64, 64, 1), None
    cap, limit, _ = target_info(device)
    for bf, bn, bk, stages in _TILES:
        if _shared_estimate(bf, bn, bk, bm, stages) <= limit:
            return (bf, bn, bk, stages), None
    bf, bn, bk, stages = _TILES[-1]
    return _TILES[-1], (f"n_mels = {n_mels}: ~{_shared_estimate(bf, bn, bk, bm, stages)} bytes of shared memory "
                        f"with the smallest tiles, above the {limit} of sm_{cap}")


def mel_spectrogram_triton(wave, lengths, frames, window, fb, bands, freq_masks, time_masks, n_fft, hop, offset,
                           boundary, n_out, preemphasis, remove_dc, power, log_mode, log_eps, log_offset, top_db,
                           mean, std, pad_value, mask_value, time_major):
    """Launch both kernels; arguments as ``avfast.ops.mel.fused_args``. Returns float32 (B, C, n_mels, n_out)
    or (B, C, n_out, n_mels) when ``time_major``."""
    B, C, T = wave.shape
    n_freq, n_mels = fb.shape
    win_len = window.shape[0]
    shape = (B, C, n_out, n_mels) if time_major else (B, C, n_mels, n_out)
    out = torch.empty(shape, device=wave.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    stride_m, stride_f = (1, n_mels) if time_major else (n_out, 1)
    cos, sin = dft_tables(n_fft, win_len, wave.device)
    small = interpreting()
    (block_f, block_n, block_k, stages), _ = tiles(n_mels, wave.device)
    block_m = max(16, next_pow2(n_mels))
    grid = (B * C, triton.cdiv(n_out, block_f))
    with device_guard(wave):
        _mel_fwd_kernel[grid](
            wave, lengths, frames, window, cos, sin, fb, out, C, T, win_len, n_freq, n_mels, hop, offset, n_out,
            stride_m, stride_f, preemphasis, power, log_eps, log_offset,
            BOUNDARY=boundary, REMOVE_DC=bool(remove_dc), PREEMPHASIS=preemphasis != 0.0, LOG_MODE=log_mode,
            POWER2=power == 2.0, PRECISION=dft_precision(), BLOCK_F=block_f, BLOCK_N=block_n, BLOCK_K=block_k,
            BLOCK_M=block_m, num_warps=4 if small else 8, num_stages=stages)
    mask_mean = math.isnan(mask_value)
    with device_guard(wave):
        _mel_finish_kernel[(B,)](
            out, frames, freq_masks, time_masks, C, n_mels, n_out, stride_m, stride_f, freq_masks.shape[1],
            time_masks.shape[1], top_db, mean, 1.0 / std, pad_value, 0.0 if mask_mean else mask_value,
            TOP_DB=top_db >= 0, MASK_MEAN=mask_mean, BLOCK_M=min(block_m, 32) if small else 32,
            BLOCK_F=64 if small else 128)
    return out
