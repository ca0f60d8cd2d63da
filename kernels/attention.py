"""Triton flash attention for short queries over long, padded keys (forward + backward).

Forward (``_attn_fwd_kernel``), per program one (row block, batch * kv head, key split), where the
rows of a kv head are its G = Hq / Hkv query heads' queries packed along M (GQA/MQA read each K/V
tile once per group; G = 1 for plain multi-head attention)::

    s = q k^T * scale + bias;  s[masked] = -inf          # masked: past kv_lens[b] or key_padding_mask
    m, l, acc: online softmax over the key blocks of the split
    out = acc / l,  lse = m + log(l)                      # all-masked rows: out 0, lse -inf

When ``B * Hkv * ceil(G * Lq / BLOCK_M)`` programs cannot fill the GPU, the keys are split into chunks
(flash-decoding): each split writes an fp32 partial (out_s, lse_s), merged by
``_merge_splits_kernel``: ``out = sum_s exp(lse_s - lse) out_s`` with ``lse = logsumexp_s lse_s``.

Backward (FlashAttention-2 style, no atomics, so bitwise deterministic):

- ``_attn_bwd_dkdv_kernel``, per (key block, batch * kv head): loops over the group's packed rows;
  ``p = exp(s - lse)``, ``dv += p_drop^T do``, ``ds = p (dp_drop - delta)``, ``dk += ds^T q * scale`` with ``delta = rowsum(do * out)`` computed in-tile (no extra launch).
- ``_attn_bwd_dq_kernel``, per (row block, batch * kv head, key split): ``dq += ds k * scale``,
  and ``dbias = ds`` stored per element when the bias needs a gradient (reduced over its broadcast
  dimensions afterwards). Split partials of dq are summed in a fixed order.

Masked keys are never loaded (masked loads), so padding may hold NaN.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from avfast.kernels.utils import device_guard, fp32_dot_precision, interpreting, next_pow2, target_info


@triton.jit
def _load_kv_tile(K, V, KPM, b, hk, offs_n, offs_d, n_end, Lk, Dh, skb, skh, skn, svb, svh, svn,
                  HAS_KPM: tl.constexpr):
    """k, v tiles (BLOCK_N, BLOCK_D) with masked keys loaded as 0, and the key validity (BLOCK_N,)."""
    valid = offs_n < n_end
    if HAS_KPM:
        valid = valid & (tl.load(KPM + b * Lk + offs_n, mask=valid, other=1) == 0)
    mask = valid[:, None] & (offs_d[None, :] < Dh)
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :], mask=mask, other=0.0)
    return k, v, valid


@triton.jit
def _group_rows(r0, b, hk, Hq, G, Lq, BLOCK_M: tl.constexpr):
    """Rows r0 .. r0 + BLOCK_M of a kv head's query group: the G query heads sharing kv head ``hk``
    are packed along M (row r = head (r // Lq) of the group, query r % Lq), so GQA/MQA read each K/V
    tile once per group. Returns (head, query index, global row of (B, Hq, Lq), valid) per row."""
    r = r0 + tl.arange(0, BLOCK_M)
    h = hk * G + r // Lq
    return h, r % Lq, (b * Hq + hk * G) * Lq + r, r < G * Lq


@triton.jit
def _load_rows(X, b, h, m, rmask, offs_d, Dh, sxb, sxh, sxm):
    """(BLOCK_M, BLOCK_D) tile of X (B, H, L, Dh) at per-row (head, position)."""
    mask = rmask[:, None] & (offs_d[None, :] < Dh)
    return tl.load(X + b * sxb + h[:, None] * sxh + m[:, None] * sxm + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _scores(q, k, valid_n, Bias, b, h, m, rmask, offs_n, sbb, sbh, sbm, sbn, scale,
            HAS_BIAS: tl.constexpr, PREC: tl.constexpr):
    """s = q k^T * scale + bias (BLOCK_M, BLOCK_N) in fp32, -inf at masked keys."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    if HAS_BIAS:
        bmask = rmask[:, None] & valid_n[None, :]
        s += tl.load(Bias + b * sbb + h[:, None] * sbh + m[:, None] * sbm + offs_n[None, :] * sbn,
                     mask=bmask, other=0.0).to(tl.float32)
    return tl.where(valid_n[None, :], s, float("-inf"))


@triton.jit
def _dropped(p, Keep, grow, rmask, offs_n, Lk, drop_scale, HAS_DROPOUT: tl.constexpr):
    """p * keep / (1 - dropout_p) with the keep mask (B, Hq, Lq, Lk) drawn in Python."""
    if HAS_DROPOUT:
        kmask = rmask[:, None] & (offs_n[None, :] < Lk)
        keep = tl.load(Keep + grow[:, None] * Lk + offs_n[None, :], mask=kmask, other=0)
        p = tl.where(keep != 0, p * drop_scale, 0.0)
    return p


@triton.jit
def _key_range(Lens, b, split, keys_per_split, Lk, HAS_LENS: tl.constexpr):
    """[start, end) of the keys this program reads: its split, cut at the sample's length."""
    n_end = Lk
    if HAS_LENS:
        n_end = tl.minimum(tl.load(Lens + b).to(tl.int32), Lk)
    start = split * keys_per_split
    return start, tl.minimum(n_end, start + keys_per_split)


@triton.jit
def _query_program(Hkv):
    """This program's (batch, kv head, first packed row block index, key split)."""
    pid_m, bhk, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # 64-bit batch index: every b * stride offset is then 64-bit (tensors may pass 2**31 elements)
    return (bhk // Hkv).to(tl.int64), bhk % Hkv, pid_m, split


@triton.jit
def _load_lse(LSE, grow, rmask):
    """lse (BLOCK_M,) for the backward: +inf on all-masked and padding rows, so exp(s - lse) = 0."""
    lse = tl.load(LSE + grow, mask=rmask, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def _row_delta(do, O, grow, rmask, offs_d, Dh):
    """delta = rowsum(do * out) (BLOCK_M,) in fp32; out is contiguous (B, Hq, Lq, Dh)."""
    mask = rmask[:, None] & (offs_d[None, :] < Dh)
    o = tl.load(O + grow[:, None] * Dh + offs_d[None, :], mask=mask, other=0.0)
    return tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)


@triton.jit
def _attn_fwd_kernel(Q, K, V, Bias, KPM, Lens, Keep, Out, LSE,
                     sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn,
                     Hq, Hkv, G, Lq, Lk, Dh, keys_per_split, scale, drop_scale, out_split_stride, lse_split_stride,
                     HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
                     HAS_DROPOUT: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, hk, pid_m, split = _query_program(Hkv)
    h, m, grow, rmask = _group_rows(pid_m * BLOCK_M, b, hk, Hq, G, Lq, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, b, h, m, rmask, offs_d, Dh, sqb, sqh, sqm)
    start, end = _key_range(Lens, b, split, keys_per_split, Lk, HAS_LENS)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k, v, valid = _load_kv_tile(K, V, KPM, b, hk, offs_n, offs_d, end, Lk, Dh, skb, skh, skn, svb, svh, svn, HAS_KPM)
        s = _scores(q, k, valid, Bias, b, h, m, rmask, offs_n, sbb, sbh, sbm, sbn, scale, HAS_BIAS, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = _dropped(p, Keep, grow, rmask, offs_n, Lk, drop_scale, HAS_DROPOUT)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(l_safe))
    omask = rmask[:, None] & (offs_d[None, :] < Dh)
    tl.store(Out + split * out_split_stride + grow[:, None] * Dh + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=omask)
    tl.store(LSE + split * lse_split_stride + grow, lse, mask=rmask)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, Bias, KPM, Lens, Keep, DO, O, LSE, DK, DV,
                          sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdb, sdh, sdm,
                          Hq, Hkv, G, Lq, Lk, Dh, scale, drop_scale,
                          HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
                          HAS_DROPOUT: tl.constexpr, PREC: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, hk, pid_n, _ = _query_program(Hkv)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    _, end = _key_range(Lens, b, 0, Lk, Lk, HAS_LENS)
    k, v, valid = _load_kv_tile(K, V, KPM, b, hk, offs_n, offs_d, end, Lk, Dh, skb, skh, skn, svb, svh, svn, HAS_KPM)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    if pid_n * BLOCK_N < end:
        for r0 in range(0, G * Lq, BLOCK_M):
            h, m, grow, rmask = _group_rows(r0, b, hk, Hq, G, Lq, BLOCK_M)
            q = _load_rows(Q, b, h, m, rmask, offs_d, Dh, sqb, sqh, sqm)
            do = _load_rows(DO, b, h, m, rmask, offs_d, Dh, sdb, sdh, sdm)
            lse = _load_lse(LSE, grow, rmask)
            delta = _row_delta(do, O, grow, rmask, offs_d, Dh)
            s = _scores(q, k, valid, Bias, b, h, m, rmask, offs_n, sbb, sbh, sbm, sbn, scale, HAS_BIAS, PREC)
            p = tl.exp(s - lse[:, None])
            p_drop = _dropped(p, Keep, grow, rmask, offs_n, Lk, drop_scale, HAS_DROPOUT)
            dv += tl.dot(tl.trans(p_drop.to(do.dtype)), do, input_precision=PREC)
            dp = _dropped(tl.dot(do, tl.trans(v), input_precision=PREC), Keep, grow, rmask, offs_n, Lk, drop_scale,
                          HAS_DROPOUT)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    row = (b * Hkv + hk) * Lk + offs_n
    mask = (offs_n[:, None] < Lk) & (offs_d[None, :] < Dh)
    tl.store(DK + row[:, None] * Dh + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + row[:, None] * Dh + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, Bias, KPM, Lens, Keep, DO, O, LSE, DQ, DBias,
                        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdb, sdh, sdm,
                        Hq, Hkv, G, Lq, Lk, Dh, keys_per_split, scale, drop_scale, dq_split_stride,
                        HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
                        HAS_DROPOUT: tl.constexpr, BIAS_GRAD: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, hk, pid_m, split = _query_program(Hkv)
    h, m, grow, rmask = _group_rows(pid_m * BLOCK_M, b, hk, Hq, G, Lq, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, b, h, m, rmask, offs_d, Dh, sqb, sqh, sqm)
    do = _load_rows(DO, b, h, m, rmask, offs_d, Dh, sdb, sdh, sdm)
    lse = _load_lse(LSE, grow, rmask)
    delta = _row_delta(do, O, grow, rmask, offs_d, Dh)
    start, end = _key_range(Lens, b, split, keys_per_split, Lk, HAS_LENS)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k, v, valid = _load_kv_tile(K, V, KPM, b, hk, offs_n, offs_d, end, Lk, Dh, skb, skh, skn, svb, svh, svn, HAS_KPM)
        s = _scores(q, k, valid, Bias, b, h, m, rmask, offs_n, sbb, sbh, sbm, sbn, scale, HAS_BIAS, PREC)
        p = tl.exp(s - lse[:, None])
        dp = _dropped(tl.dot(do, tl.trans(v), input_precision=PREC), Keep, grow, rmask, offs_n, Lk, drop_scale,
                      HAS_DROPOUT)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        if BIAS_GRAD:
            bmask = rmask[:, None] & (offs_n[None, :] < end)
            tl.store(DBias + grow[:, None] * Lk + offs_n[None, :], ds, mask=bmask)
    mask = rmask[:, None] & (offs_d[None, :] < Dh)
    tl.store(DQ + split * dq_split_stride + grow[:, None] * Dh + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=mask)


@triton.jit
def _merge_splits_kernel(Part, PartLSE, Out, LSE, rows, Dh, S, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out = sum_s exp(lse_s - lse) out_s, lse = logsumexp_s lse_s for BLOCK_R rows of (rows, Dh)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    rmask = r < rows
    mask = rmask[:, None] & (d[None, :] < Dh)
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    for s in range(0, S):
        m = tl.maximum(m, tl.load(PartLSE + s * rows + r, mask=rmask, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for s in range(0, S):
        w = tl.exp(tl.load(PartLSE + s * rows + r, mask=rmask, other=float("-inf")) - m_safe)
        total += w
        acc += w[:, None] * tl.load(Part + (s * rows + r[:, None]) * Dh + d[None, :], mask=mask, other=0.0)
    safe = tl.where(total == 0.0, 1.0, total)
    tl.store(Out + r[:, None] * Dh + d[None, :], (acc / safe[:, None]).to(Out.dtype.element_ty), mask=mask)
    tl.store(LSE + r, tl.where(total == 0.0, float("-inf"), m_safe + tl.log(safe)), mask=rmask)


# --------------------------------------------------------------------------------- launchers


@dataclasses.dataclass(frozen=True)
class Plan:
    """Tiles and key splits for one call: BLOCK_M follows Lq, splits fill the GPU."""

    block_m: int
    block_n: int
    block_d: int
    splits: int
    keys_per_split: int
    num_warps: int
    num_stages: int = 2
    dkdv_warps: int = 4   # warps of the backward kernels, chosen so fp16/bf16 compile without spills
    dq_warps: int = 4


def _sm_count(device: torch.device) -> int:
    return target_info(device)[2]  # interpreter: 4, so the split path is exercised on CPU too


MAX_HEAD_DIM = 512


def _shared_estimate(bm: int, bn: int, bd: int, elem: int, stages: int) -> int:
    """Upper estimate of the shared bytes of the worst of the three kernels: the streamed tiles of
    the pipelined stages (K, V in forward / dq; Q, dO in dK/dV) plus the resident ones and one score
    tile, with a 25 % margin (checked by benchmarks/compile_check.py on every target)."""
    buffers = max(1, stages - 1)
    fwd = buffers * 2 * bn * bd * elem + 2 * bm * bd * elem + bm * bn * elem
    dkdv = buffers * 2 * bm * bd * elem + 2 * bn * bd * elem + 2 * bm * bn * elem
    return int(max(fwd, dkdv) * 1.25)


def tiles(rows: int, dh: int, dtype: torch.dtype, device) -> tuple[tuple[int, int, int, int], str | None]:
    """((BLOCK_M, BLOCK_N, num_warps, num_stages), None), or (the smallest tiles, why they do not fit
    the target's shared memory). BLOCK_M follows the packed rows, in [16, 64] (128 at Dh <= 64);
    tiles and stages shrink until the estimate fits. The exact fp32 path ("ieee") keeps 32-wide tiles."""
    block_d = max(16, next_pow2(dh))
    bm0 = min(max(16, next_pow2(rows)), 128 if block_d <= 64 else 64)
    bn0 = 64 if block_d <= 128 else 32
    if interpreting():
        return (bm0, 32, 4, 1), None
    elem = 4 if dtype == torch.float32 else 2
    if dtype == torch.float32 and fp32_dot_precision() == "ieee":
        bm0, bn0 = min(bm0, 32), min(bn0, 32)
    cap, limit, _ = target_info(device)
    candidates = [(bm0, bn0, 2), (bm0, bn0, 1), (min(bm0, 32), bn0, 1), (16, min(bn0, 32), 1), (16, 16, 1)]
    for bm, bn, stages in candidates:
        if _shared_estimate(bm, bn, block_d, elem, stages) <= limit:
            return (bm, bn, 4 if bm * block_d <= 64 * 64 else 8, stages), None
    bm, bn, stages = candidates[-1]
    return ((bm, bn, 4 if bm * block_d <= 64 * 64 else 8, stages),
            f"{str(dtype).replace('torch.', '')} head dim {dh}: ~{_shared_estimate(bm, bn, block_d, elem, stages)} "
            f"bytes of shared memory with the smallest tiles ({bm} x {bn}), above the {limit} of sm_{cap}")


def refusal(rows: int, dh: int, dtype: torch.dtype, device) -> list[str]:
    """Why the Triton kernels cannot run this head dim / dtype on the target (empty: they can)."""
    if dh > MAX_HEAD_DIM:
        return [f"head dim {dh} > {MAX_HEAD_DIM} (Triton kernels)"]
    why = tiles(rows, dh, dtype, device)[1]
    return [why] if why else []


def plan(b: int, hkv: int, rows: int, lk: int, dh: int, device: torch.device, splits: int | None = None,
         dtype: torch.dtype = torch.float16) -> Plan:
    """Tile sizes and the key split for B * Hkv query groups of ``rows`` = (Hq / Hkv) * Lq packed rows.

    Tiles from ``tiles``; the keys are split when fewer than 2 programs per SM would run, each split
    keeping >= 2 key blocks.
    """
    block_d = max(16, next_pow2(dh))
    (block_m, block_n, num_warps, num_stages), _ = tiles(rows, dh, dtype, device)
    n_blocks = triton.cdiv(lk, block_n)
    if splits is None:
        programs = b * hkv * triton.cdiv(rows, block_m)
        target = 2 * _sm_count(device)
        splits = 1 if programs >= target else min(triton.cdiv(target, programs), max(1, n_blocks // 2))
    splits = max(1, min(splits, n_blocks))
    keys_per_split = triton.cdiv(n_blocks, splits) * block_n
    splits = triton.cdiv(lk, keys_per_split)
    # dK/dV holds two fp32 (BLOCK_N, Dh) accumulators plus K, V, Q, dO tiles; dQ one accumulator
    dkdv_warps = 16 if block_d >= 512 else 8 if max(block_m, block_n) * block_d >= 64 * 64 else 4
    dq_warps = 4 if block_m * block_d <= 32 * 256 and block_d <= 256 else 8
    if interpreting():
        dkdv_warps = dq_warps = 4
    return Plan(block_m, block_n, block_d, splits, keys_per_split, num_warps, num_stages, dkdv_warps, dq_warps)


def _strides(x: torch.Tensor | None) -> tuple[int, ...]:
    return (0, 0, 0) if x is None else (x.stride(0), x.stride(1), x.stride(2))


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _shared(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p):
    """Pointer/stride/flag arguments every kernel takes, prepared once per call."""
    b, hq, lq, dh = q.shape
    bias4 = None if bias is None else bias.expand(b, hq, lq, k.shape[2])
    prec = fp32_dot_precision() if q.dtype == torch.float32 else None
    tensors = (q, k, v, bias4, None if kpm is None else kpm.contiguous().view(torch.uint8),
               None if kv_lens is None else kv_lens.contiguous(), None if keep is None else keep.contiguous().view(torch.uint8))
    strides = (*_strides(q), *_strides(k), *_strides(v), *(bias4.stride() if bias4 is not None else (0, 0, 0, 0)))
    flags = dict(HAS_BIAS=bias is not None, HAS_KPM=kpm is not None, HAS_LENS=kv_lens is not None,
                 HAS_DROPOUT=keep is not None, PREC=prec)
    drop_scale = 1.0 / (1.0 - dropout_p) if keep is not None else 1.0
    return tensors, strides, flags, drop_scale


def attention_forward(q, k, v, kv_lens, kpm, bias, keep, scale: float, dropout_p: float, splits: int | None = None):
    """Flash forward: (out (B, Hq, Lq, Dh) in q's dtype, lse (B, Hq, Lq) fp32; -inf on all-masked rows)."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    b, hq, lq, dh = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = hq // hkv
    pl = plan(b, hkv, g * lq, lk, dh, q.device, splits, q.dtype)
    tensors, strides, flags, drop_scale = _shared(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p)
    if pl.splits == 1:
        out = torch.empty(b, hq, lq, dh, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, hq, lq, dtype=torch.float32, device=q.device)
    else:
        out = torch.empty(pl.splits, b, hq, lq, dh, dtype=torch.float32, device=q.device)
        lse = torch.empty(pl.splits, b, hq, lq, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(g * lq, pl.block_m), b * hkv, pl.splits)
    with device_guard(q):
        _attn_fwd_kernel[grid](*tensors, out, lse, *strides, hq, hkv, g, lq, lk, dh, pl.keys_per_split, scale,
                               drop_scale, b * hq * lq * dh, b * hq * lq, **flags, BLOCK_M=pl.block_m,
                               BLOCK_N=pl.block_n, BLOCK_D=pl.block_d, num_warps=pl.num_warps, num_stages=pl.num_stages)
    if pl.splits == 1:
        return out, lse
    return merge_splits(out, lse, q.dtype)


def merge_splits(part: torch.Tensor, part_lse: torch.Tensor, dtype: torch.dtype):
    """Combine split partials (S, B, H, Lq, Dh) and (S, B, H, Lq) into (out in ``dtype``, lse), one launch."""
    splits, dh = part.shape[0], part.shape[-1]
    out = torch.empty(part.shape[1:], dtype=dtype, device=part.device)
    lse = torch.empty(part_lse.shape[1:], dtype=torch.float32, device=part.device)
    rows = lse.numel()
    block_d = max(16, next_pow2(dh))
    block_r = max(1, min(64, 4096 // block_d))
    with device_guard(part):
        _merge_splits_kernel[(triton.cdiv(rows, block_r),)](part, part_lse, out, lse, rows, dh, splits,
                                                            BLOCK_R=block_r, BLOCK_D=block_d)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale: float, dropout_p: float,
                       bias_grad: bool, splits: int | None = None):
    """Flash backward: (dq, dk, dv, dbias (B, Hq, Lq, Lk) fp32 or None), no atomics."""
    q, k, v, dout = (_last_dim_contiguous(t) for t in (q, k, v, dout))
    b, hq, lq, dh = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = hq // hkv
    pl = plan(b, hkv, g * lq, lk, dh, q.device, splits, q.dtype)
    tensors, strides, flags, drop_scale = _shared(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p)
    out, lse = out.contiguous(), lse.contiguous()
    dk, dv = torch.empty(b, hkv, lk, dh, dtype=k.dtype, device=q.device), torch.empty(b, hkv, lk, dh, dtype=v.dtype,
                                                                                        device=q.device)
    common = (*strides, *_strides(dout))
    with device_guard(q):
        _attn_bwd_dkdv_kernel[(triton.cdiv(lk, pl.block_n), b * hkv)](
            *tensors, dout, out, lse, dk, dv, *common, hq, hkv, g, lq, lk, dh, scale, drop_scale, **flags,
            BLOCK_M=pl.block_m, BLOCK_N=pl.block_n, BLOCK_D=pl.block_d, num_warps=pl.dkdv_warps, num_stages=pl.num_stages)
    dq_dtype = q.dtype if pl.splits == 1 else torch.float32
    dq = torch.empty(pl.splits, b, hq, lq, dh, dtype=dq_dtype, device=q.device)
    dbias = torch.zeros(b, hq, lq, lk, dtype=torch.float32, device=q.device) if bias_grad else None
    with device_guard(q):
        _attn_bwd_dq_kernel[(triton.cdiv(g * lq, pl.block_m), b * hkv, pl.splits)](
            *tensors, dout, out, lse, dq, dbias, *common, hq, hkv, g, lq, lk, dh, pl.keys_per_split, scale,
            drop_scale, b * hq * lq * dh, **flags, BIAS_GRAD=bias_grad, BLOCK_M=pl.block_m, BLOCK_N=pl.block_n,
            BLOCK_D=pl.block_d, num_warps=pl.dq_warps, num_stages=pl.num_stages)
    dq = dq[0] if pl.splits == 1 else dq.sum(0).to(q.dtype)
    return dq, dk, dv, dbias
