"""Triton kernels of ``avfast.ops.contrastive_loss``: fused tiles with online log-sum-exp.

Rows of ``x`` (M, D) against columns of ``y`` (N, D); row i's positive is column ``ROW0 + i``.
Per (BLOCK_M x BLOCK_N) tile the logits ``z = scale * x y^T`` are computed with one ``tl.dot`` over
the whole (padded) D, the id rules applied in-tile (same positive id off the diagonal: removed;
same source: ``+ log_w`` for InfoNCE, weight ``exp(log_w)`` for SigLIP) and reduced on the fly:

- ``_contrastive_fwd_kernel``: per row, online max / sum-exp (InfoNCE) or the sum of
  ``softplus(-+z)`` (SigLIP); writes the row loss and (lse, valid count). The column direction of a
  symmetric loss is the same kernel on (y, x).
- ``_contrastive_dx_kernel``: per row block, recompute tiles, ``dz`` from both directions' lse, and
  ``dx += dz @ y`` (plus per-block partial sums of ``dz`` for SigLIP's bias gradient).
- ``_contrastive_dy_kernel``: per column block, ``dy += dz^T @ x``.

No B x B tensor, no atomics (deterministic). D is limited to 1024 (one tile row in registers).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from avfast.kernels.utils import (device_guard, ensure_contiguous, fp32_dot_precision, interpreting, next_pow2,
                                  target_info)

MAX_D = 1024
_NEG = tl.constexpr(-1.0e30)  # running-max start: finite so that exp(m_old - m_new) never sees inf - inf


@triton.jit
def _softplus(v):
    return tl.maximum(v, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(v)))


@triton.jit
def _tile(x, y, rows, cols, rmask, cmask, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr, scale, bias, src_term, ROW0,
          HAS_POS: tl.constexpr, HAS_SRC: tl.constexpr, SIGLIP: tl.constexpr, PREC: tl.constexpr):
    """(z, diag, keep, weight) of one tile: biased logits (-inf where not kept for InfoNCE).

    ``src_term`` is log(source_weight) for InfoNCE (added to logits) and source_weight for SigLIP
    (multiplies the pair term).
    """
    s = tl.dot(x, tl.trans(y), input_precision=PREC) * scale
    valid = rmask[:, None] & cmask[None, :]
    diag = ((rows[:, None] + ROW0) == cols[None, :]) & valid
    keep = valid
    if HAS_POS:
        xp = tl.load(xpos_ptr + rows, mask=rmask, other=-1)
        yp = tl.load(ypos_ptr + cols, mask=cmask, other=-2)
        keep = keep & ((xp[:, None] != yp[None, :]) | diag)
    hard = keep & (diag == 0)
    if HAS_SRC:
        xs = tl.load(xsrc_ptr + rows, mask=rmask, other=-1)
        ys = tl.load(ysrc_ptr + cols, mask=cmask, other=-2)
        hard = hard & (xs[:, None] == ys[None, :])
    else:
        hard = hard & (diag != diag)
    if SIGLIP:
        z = s + bias
        weight = tl.where(keep, tl.where(hard, src_term, 1.0), 0.0)
    else:
        z = tl.where(keep, s + tl.where(hard, src_term, 0.0), float("-inf"))
        weight = keep.to(tl.float32)
    return z, diag, keep, weight


@triton.jit
def _dz(z, diag, keep, weight, g_r, lse_r, cnt_r, g_c, lse_c, cnt_c, smoothing,
        SIGLIP: tl.constexpr, BOTH: tl.constexpr):
    """d loss / d z of one tile from the row (and, with BOTH, column) direction."""
    if SIGLIP:
        dt = tl.where(diag, -tl.sigmoid(-z), tl.sigmoid(z)) * weight
        g = g_r[:, None] + tl.zeros_like(z)
        if BOTH:
            g = g + g_c[None, :]
        d = dt * g
    else:
        diagf = diag.to(tl.float32)
        keepf = keep.to(tl.float32)
        d = g_r[:, None] * (tl.exp(z - lse_r[:, None]) - (1.0 - smoothing) * diagf
                            - (smoothing / cnt_r)[:, None] * keepf)
        if BOTH:
            d += g_c[None, :] * (tl.exp(z - lse_c[None, :]) - (1.0 - smoothing) * diagf
                                 - (smoothing / cnt_c)[None, :] * keepf)
    return tl.where(keep, d, 0.0)


@triton.jit
def _load_rows(ptr, idx, mask, stride, offs_d, dmask):
    # 64-bit row offsets: (rows x D) may pass 2**31 elements
    return tl.load(ptr + idx.to(tl.int64)[:, None] * stride + offs_d[None, :], mask=mask[:, None] & dmask[None, :],
                   other=0.0)


@triton.jit
def _load_block(ptr, start, n, stride, offs_d, dmask, BLOCK: tl.constexpr):
    """Rows ``start .. start + BLOCK`` of ``ptr`` (n, D): (idx, mask, tile), zeros past the end."""
    idx = start + tl.arange(0, BLOCK)
    mask = idx < n
    return idx, mask, _load_rows(ptr, idx, mask, stride, offs_d, dmask)


@triton.jit
def _block_start(ptr, pid, n, stride, D, scale_ptr, bias_ptr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """This program's block of rows of ``ptr`` and the scalars: (idx, mask, offs_d, dmask, tile, scale, bias)."""
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    idx, mask, tile = _load_block(ptr, pid * BLOCK, n, stride, offs_d, dmask, BLOCK)
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr) if HAS_BIAS else 0.0
    return idx, mask, offs_d, dmask, tile, scale, bias


@triton.jit
def _load_dir(g_ptr, stats_ptr, idx, mask):
    g = tl.load(g_ptr + idx, mask=mask, other=0.0)
    lse = tl.load(stats_ptr + idx * 2, mask=mask, other=0.0)
    cnt = tl.load(stats_ptr + idx * 2 + 1, mask=mask, other=1.0)
    return g, lse, cnt


@triton.jit
def _contrastive_fwd_kernel(x_ptr, y_ptr, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr, scale_ptr, bias_ptr,
                            loss_ptr, stats_ptr, M, N, D, stride_x, stride_y, ROW0, src_term, smoothing,
                            HAS_POS: tl.constexpr, HAS_SRC: tl.constexpr, HAS_BIAS: tl.constexpr,
                            SIGLIP: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """loss_i = lse_j z_ij - (1 - eps) z_ii - eps mean_valid_j z_ij (InfoNCE) | sum_j softplus(-+z_ij) w_ij."""
    rows, rmask, offs_d, dmask, x, scale, bias = _block_start(x_ptr, tl.program_id(0), M, stride_x, D, scale_ptr,
                                                              bias_ptr, HAS_BIAS, BLOCK_M, BLOCK_D)
    m = tl.full((BLOCK_M,), _NEG, tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    pos = tl.zeros((BLOCK_M,), tl.float32)
    tot = tl.zeros((BLOCK_M,), tl.float32)
    cnt = tl.zeros((BLOCK_M,), tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols, cmask, y = _load_block(y_ptr, c0, N, stride_y, offs_d, dmask, BLOCK_N)
        z, diag, keep, weight = _tile(x, y, rows, cols, rmask, cmask, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr,
                                      scale, bias, src_term, ROW0, HAS_POS, HAS_SRC, SIGLIP, PREC)
        if SIGLIP:
            tot += tl.sum(_softplus(tl.where(diag, -z, z)) * weight, 1)
        else:
            m_new = tl.maximum(m, tl.max(z, 1))
            l = l * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), 1)
            m = m_new
            pos += tl.sum(tl.where(diag, z, 0.0), 1)
            cnt += tl.sum(keep.to(tl.float32), 1)
            tot += tl.sum(tl.where(keep, z, 0.0), 1)
    if SIGLIP:
        loss = tot
        lse = tl.zeros((BLOCK_M,), tl.float32)
    else:
        lse = m + tl.log(tl.where(l > 0, l, 1.0))  # l = 0 only on padding rows
        loss = lse - (1.0 - smoothing) * pos - smoothing * tot / tl.maximum(cnt, 1.0)
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(stats_ptr + rows * 2, lse, mask=rmask)
    tl.store(stats_ptr + rows * 2 + 1, cnt, mask=rmask)


@triton.jit
def _contrastive_dx_kernel(x_ptr, y_ptr, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr, scale_ptr, bias_ptr,
                           gr_ptr, rstats_ptr, gc_ptr, cstats_ptr, dx_ptr, dbias_ptr, M, N, D, stride_x, stride_y,
                           ROW0, src_term, smoothing, HAS_POS: tl.constexpr, HAS_SRC: tl.constexpr,
                           HAS_BIAS: tl.constexpr, SIGLIP: tl.constexpr, BOTH: tl.constexpr, PREC: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx_i = sum_j dz_ij y_j (unscaled); dbias[block] = sum of dz over the block's rows."""
    pid = tl.program_id(0)
    rows, rmask, offs_d, dmask, x, scale, bias = _block_start(x_ptr, pid, M, stride_x, D, scale_ptr, bias_ptr,
                                                              HAS_BIAS, BLOCK_M, BLOCK_D)
    g_r, lse_r, cnt_r = _load_dir(gr_ptr, rstats_ptr, rows, rmask)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    bsum = tl.zeros((BLOCK_M,), tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols, cmask, y = _load_block(y_ptr, c0, N, stride_y, offs_d, dmask, BLOCK_N)
        z, diag, keep, weight = _tile(x, y, rows, cols, rmask, cmask, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr,
                                      scale, bias, src_term, ROW0, HAS_POS, HAS_SRC, SIGLIP, PREC)
        if BOTH:
            g_c, lse_c, cnt_c = _load_dir(gc_ptr, cstats_ptr, cols, cmask)
        else:
            g_c, lse_c, cnt_c = g_r, lse_r, cnt_r
        d = _dz(z, diag, keep, weight, g_r, lse_r, cnt_r, g_c, lse_c, cnt_c, smoothing, SIGLIP, BOTH)
        acc += tl.dot(d.to(y.dtype), y, input_precision=PREC)
        bsum += tl.sum(d, 1)
    tl.store(dx_ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :], acc, mask=rmask[:, None] & dmask[None, :])
    tl.store(dbias_ptr + pid, tl.sum(bsum, 0))


@triton.jit
def _contrastive_dy_kernel(x_ptr, y_ptr, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr, scale_ptr, bias_ptr,
                           gr_ptr, rstats_ptr, gc_ptr, cstats_ptr, dy_ptr, M, N, D, stride_x, stride_y,
                           ROW0, src_term, smoothing, HAS_POS: tl.constexpr, HAS_SRC: tl.constexpr,
                           HAS_BIAS: tl.constexpr, SIGLIP: tl.constexpr, BOTH: tl.constexpr, PREC: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dy_j = sum_i dz_ij x_i (unscaled), one program per block of columns."""
    cols, cmask, offs_d, dmask, y, scale, bias = _block_start(y_ptr, tl.program_id(0), N, stride_y, D, scale_ptr,
                                                              bias_ptr, HAS_BIAS, BLOCK_N, BLOCK_D)
    g_c = tl.zeros((BLOCK_N,), tl.float32)
    lse_c = tl.zeros((BLOCK_N,), tl.float32)
    cnt_c = tl.zeros((BLOCK_N,), tl.float32) + 1.0
    if BOTH:
        g_c, lse_c, cnt_c = _load_dir(gc_ptr, cstats_ptr, cols, cmask)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for r0 in range(0, M, BLOCK_M):
        rows, rmask, x = _load_block(x_ptr, r0, M, stride_x, offs_d, dmask, BLOCK_M)
        z, diag, keep, weight = _tile(x, y, rows, cols, rmask, cmask, xpos_ptr, ypos_ptr, xsrc_ptr, ysrc_ptr,
                                      scale, bias, src_term, ROW0, HAS_POS, HAS_SRC, SIGLIP, PREC)
        g_r, lse_r, cnt_r = _load_dir(gr_ptr, rstats_ptr, rows, rmask)
        d = _dz(z, diag, keep, weight, g_r, lse_r, cnt_r, g_c, lse_c, cnt_c, smoothing, SIGLIP, BOTH)
        acc += tl.dot(tl.trans(d.to(x.dtype)), x, input_precision=PREC)
    tl.store(dy_ptr + cols.to(tl.int64)[:, None] * D + offs_d[None, :], acc, mask=cmask[:, None] & dmask[None, :])


# Launchers ----------------------------------------------------------------------------------------


# (BLOCK_M, BLOCK_N, num_warps, num_stages), most preferred first; the first whose estimated shared
# memory fits the target is used. The exact fp32 path ("ieee": FMA, no tensor cores) spills on 64-wide
# tiles, so it starts at 32 x 32 (spill-free up to D = 128; above, it spills: benchmarks/RESULTS.md).
_TILES_TC = ((64, 64, 4, 3), (64, 32, 8, 2), (32, 32, 8, 1), (16, 16, 4, 1))
_TILES_IEEE = ((32, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1))
_TILES_WIDE = ((16, 32, 8, 1), (16, 16, 8, 1))   # D = 1024: a 32-row fp32 accumulator would spill


def _shared_estimate(block_m: int, block_n: int, block_d: int, elem: int, stages: int, ieee: bool = False) -> int:
    """Upper estimate of the shared bytes of the three kernels: the x and y tiles of the pipelined
    stages; the tensor-core backward kernels stage up to 1.5x that (an operand in a second layout),
    the FMA ("ieee") ones exactly that. Checked against the compiler by benchmarks/compile_check.py."""
    return int((block_m + block_n) * block_d * elem * max(1, stages - 1) * (1.0 if ieee else 1.5)) + 1024


def plan(d: int, dtype: torch.dtype, device) -> tuple[dict, str | None]:
    """(tile settings, None) for feature size ``d``, or (the smallest tiles, why they do not fit)."""
    block_d = max(16, next_pow2(d))
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d, num_warps=4), None
    ieee = dtype == torch.float32 and fp32_dot_precision() == "ieee"
    elem = 4 if dtype == torch.float32 else 2
    cap, limit, _ = target_info(device)
    candidates = _TILES_IEEE if ieee else _TILES_TC
    if block_d >= 1024 and not ieee:
        candidates = _TILES_WIDE
    for bm, bn, warps, stages in candidates:
        if block_d > 128 and stages > 2:
            continue
        if _shared_estimate(bm, bn, block_d, elem, stages, ieee) <= limit:
            return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=warps, num_stages=stages), None
    bm, bn, warps, stages = candidates[-1]
    need = _shared_estimate(bm, bn, block_d, elem, stages, ieee)
    return (dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=warps, num_stages=stages),
            f"{str(dtype).replace('torch.', '')} D = {d} needs ~{need} bytes of shared memory with the smallest "
            f"tile ({bm} x {bn}), above the {limit} of sm_{cap}")


def _settings(d: int, dtype: torch.dtype = torch.float16, device="cpu") -> dict:
    return plan(d, dtype, device)[0]


def _dy_settings(cfg: dict) -> dict:
    """The dy kernel's settings: its loop over the rows of x steps at most 32 rows (64-row steps
    spilled 16-24 B at D = 128 with ids on sm_90: its dz tile is transposed for the dot)."""
    return dict(cfg, BLOCK_M=32) if cfg["BLOCK_M"] > 32 else cfg


def _common(x, y, scale, bias, ids, log_w, kind):
    """Arguments shared by the three kernels, in their order, plus constexpr flags."""
    x, y = ensure_contiguous(x, y)
    dummy = scale
    ptrs = [t.contiguous() if t is not None else dummy for t in (ids.x_pos, ids.y_pos, ids.x_src, ids.y_src)]
    flags = dict(HAS_POS=ids.x_pos is not None, HAS_SRC=ids.x_src is not None, HAS_BIAS=bias is not None,
                 SIGLIP=kind == "siglip", PREC=fp32_dot_precision() if x.dtype == torch.float32 else "tf32")
    scale32 = scale.detach().reshape(1).float()
    bias32 = bias.detach().reshape(1).float() if bias is not None else scale32
    # SigLIP weighs same-source pairs: its kernels receive exp(log_w) in the log_w slot
    src_term = math.exp(log_w) if kind == "siglip" else log_w
    return x, y, ptrs, scale32, bias32, src_term, flags


def _check(x):
    if x.shape[1] > MAX_D:
        raise ValueError(f"contrastive_loss triton: D = {x.shape[1]} > {MAX_D}; use backend='chunked'")


def _forward_dir(x, y, scale, bias, ids, offset, log_w, smoothing, kind):
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    x, y, ptrs, s, b, src_term, flags = _common(x, y, scale, bias, ids, log_w, kind)
    loss = torch.empty(m, device=x.device, dtype=torch.float32)
    stats = torch.empty(m, 2, device=x.device, dtype=torch.float32)
    cfg = _settings(d, x.dtype, x.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
    with device_guard(x):
        _contrastive_fwd_kernel[grid](x, y, *ptrs, s, b, loss, stats, m, n, d, x.stride(0), y.stride(0), offset,
                                          float(src_term), float(smoothing), **flags, **cfg)
    return loss, stats


def forward(x, y, scale, bias, ids, offset: int, log_w: float, smoothing: float, both: bool, kind: str):
    """(row_loss (M,), col_loss (N,) or (0,), row_stats (M, 2), col_stats), float32."""
    _check(x)
    row_loss, row_stats = _forward_dir(x, y, scale, bias, ids, offset, log_w, smoothing, kind)
    if not both:
        return row_loss, row_loss.new_zeros(0), row_stats, row_stats.new_zeros(0, 2)
    swapped = type(ids)(ids.y_pos, ids.x_pos, ids.y_src, ids.x_src)
    # column j's positive is row j - offset: the same kernel on (y, x) with ROW0 = -offset
    col_loss, col_stats = _forward_dir(y, x, scale, bias, swapped, -offset, log_w, smoothing, kind)
    return row_loss, col_loss, row_stats, col_stats


def backward(g_row, g_col, x, y, scale, bias, ids, row_stats, col_stats, offset: int, log_w: float,
             smoothing: float, both: bool, kind: str):
    """(grad_x, grad_y, grad_scale, grad_bias) of sum(g_row * row_loss) + sum(g_col * col_loss)."""
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    xc, yc, ptrs, s, b, src_term, flags = _common(x, y, scale, bias, ids, log_w, kind)
    g_row = g_row.float().contiguous()
    g_col = g_col.float().contiguous() if both else g_row
    col_stats = col_stats.contiguous() if both else row_stats
    cfg = _settings(d, x.dtype, x.device)
    dx = torch.empty(m, d, device=x.device, dtype=torch.float32)
    dy = torch.empty(n, d, device=x.device, dtype=torch.float32)
    n_row_blocks = triton.cdiv(m, cfg["BLOCK_M"])
    dbias = torch.empty(n_row_blocks, device=x.device, dtype=torch.float32)
    common = (xc, yc, *ptrs, s, b, g_row, row_stats.contiguous(), g_col, col_stats)
    scalars = (m, n, d, xc.stride(0), yc.stride(0), offset, float(src_term), float(smoothing))
    with device_guard(x):
        _contrastive_dx_kernel[(n_row_blocks,)](*common, dx, dbias, *scalars, BOTH=both, **flags, **cfg)
        _contrastive_dy_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](*common, dy, *scalars, BOTH=both, **flags,
                                                                  **_dy_settings(cfg))
    grad_scale = (dx * xc.float()).sum().to(scale.dtype)
    sc = scale.detach().float()
    return (dx * sc).to(x.dtype), (dy * sc).to(y.dtype), grad_scale, dbias.sum()
