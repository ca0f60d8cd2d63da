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

from avfast.kernels.utils import (device_guard, fp32_dot_precision, interpreting, next_pow2, register_cap,
                                  target_info)


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
def _scores(a, b_t, valid, Bias, b, H, M, N, bmask, sbb, sbh, sbm, sbn, scale, HAS_BIAS: tl.constexpr,
            PREC: tl.constexpr):
    """a @ b_t * scale + bias in fp32, -inf where not ``valid``: rows x keys (q, k^T) or keys x rows
    (k, q^T); the bias indices H (head), M (query), N (key) and the masks come broadcast in that
    orientation."""
    s = tl.dot(a, b_t, input_precision=PREC) * scale
    if HAS_BIAS:
        s += tl.load(Bias + b * sbb + H * sbh + M * sbm + N * sbn, mask=bmask, other=0.0).to(tl.float32)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _dropped(p, Keep, R, N, kmask, Lk, drop_scale, HAS_DROPOUT: tl.constexpr):
    """p * keep / (1 - dropout_p) with the keep mask (B, Hq, Lq, Lk) drawn in Python; R: global row of
    (B, Hq, Lq), N: key, broadcast in p's orientation."""
    if HAS_DROPOUT:
        keep = tl.load(Keep + R * Lk + N, mask=kmask, other=0)
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
        bmask = rmask[:, None] & valid[None, :]
        s = _scores(q, tl.trans(k), valid[None, :], Bias, b, h[:, None], m[:, None], offs_n[None, :], bmask,
                    sbb, sbh, sbm, sbn, scale, HAS_BIAS, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = _dropped(p, Keep, grow[:, None], offs_n[None, :], bmask, Lk, drop_scale, HAS_DROPOUT)
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
def _attn_bwd_dq_kernel(Q, K, V, Bias, KPM, Lens, Keep, DO, O, LSE, DQ, Delta,
                        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdb, sdh, sdm,
                        Hq, Hkv, G, Lq, Lk, Dh, keys_per_split, scale, drop_scale, dq_split_stride,
                        HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
                        HAS_DROPOUT: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dq of BLOCK_M packed rows over one key split; split 0 also stores
    delta = rowsum(dO * O) for the dK/dV kernel launched after it."""
    b, hk, pid_m, split = _query_program(Hkv)
    h, m, grow, rmask = _group_rows(pid_m * BLOCK_M, b, hk, Hq, G, Lq, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, b, h, m, rmask, offs_d, Dh, sqb, sqh, sqm)
    do = _load_rows(DO, b, h, m, rmask, offs_d, Dh, sdb, sdh, sdm)
    lse = _load_lse(LSE, grow, rmask)
    omask = rmask[:, None] & (offs_d[None, :] < Dh)
    o = tl.load(O + grow[:, None] * Dh + offs_d[None, :], mask=omask, other=0.0)   # out is contiguous
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(Delta + grow, delta, mask=rmask & (split == 0))
    start, end = _key_range(Lens, b, split, keys_per_split, Lk, HAS_LENS)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k, v, valid = _load_kv_tile(K, V, KPM, b, hk, offs_n, offs_d, end, Lk, Dh, skb, skh, skn, svb, svh, svn, HAS_KPM)
        bmask = rmask[:, None] & valid[None, :]
        s = _scores(q, tl.trans(k), valid[None, :], Bias, b, h[:, None], m[:, None], offs_n[None, :], bmask,
                    sbb, sbh, sbm, sbn, scale, HAS_BIAS, PREC)
        p = tl.exp(s - lse[:, None])
        dp = _dropped(tl.dot(do, tl.trans(v), input_precision=PREC), Keep, grow[:, None], offs_n[None, :], bmask, Lk,
                      drop_scale, HAS_DROPOUT)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + split * dq_split_stride + grow[:, None] * Dh + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=omask)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, Bias, KPM, Lens, Keep, DO, Delta, LSE, DK, DV, DBias,
                          sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdb, sdh, sdm,
                          Hq, Hkv, G, Lq, Lk, Dh, scale, drop_scale,
                          HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
                          HAS_DROPOUT: tl.constexpr, BIAS_GRAD: tl.constexpr, PREC: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dk, dv (and dbias = ds) of BLOCK_N keys over the group's packed rows, in the keys x rows
    orientation (s^T = k q^T): p^T and ds^T feed the dv / dk dots without a transpose of the fp32 tiles."""
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
            delta = tl.load(Delta + grow, mask=rmask, other=0.0)
            bmask = valid[:, None] & rmask[None, :]
            s_t = _scores(k, tl.trans(q), valid[:, None], Bias, b, h[None, :], m[None, :], offs_n[:, None], bmask,
                          sbb, sbh, sbm, sbn, scale, HAS_BIAS, PREC)
            p_t = tl.exp(s_t - lse[None, :])
            p_drop = _dropped(p_t, Keep, grow[None, :], offs_n[:, None], bmask, Lk, drop_scale, HAS_DROPOUT)
            dv += tl.dot(p_drop.to(do.dtype), do, input_precision=PREC)
            dp_t = _dropped(tl.dot(v, tl.trans(do), input_precision=PREC), Keep, grow[None, :], offs_n[:, None], bmask,
                            Lk, drop_scale, HAS_DROPOUT)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
            if BIAS_GRAD:
                tl.store(DBias + grow[None, :] * Lk + offs_n[:, None], ds_t, mask=(offs_n[:, None] < end) & rmask[None, :])
    row = (b * Hkv + hk) * Lk + offs_n
    mask = (offs_n[:, None] < Lk) & (offs_d[None, :] < Dh)
    tl.store(DK + row[:, None] * Dh + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + row[:, None] * Dh + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=mask)


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
class Tile:
    """One kernel's launch configuration: BLOCK_M query rows, BLOCK_N keys, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def launch(self, block_d: int) -> dict:
        """The constexpr / launch keywords, with the launch's register cap stated in the PTX
        (``maxnreg`` -> ``.maxnreg``): without it ptxas 12.8 sometimes allocates far fewer registers
        than the launch allows and spills instead (the former dK/dV kernel: 32 registers and 5-16 KB
        of spills on sm_80, 255 registers for the same PTX on sm_86)."""
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_D=block_d, num_warps=self.num_warps,
                    num_stages=self.num_stages, maxnreg=register_cap(self.num_warps))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Tiles of the three kernels and the key split for one call: BLOCK_M of the forward and dQ
    follows the packed rows, splits fill the GPU."""

    block_d: int
    fwd: Tile
    dq: Tile
    dkdv: Tile
    splits: int
    keys_per_split: int

    @property
    def block_m(self) -> int:
        return self.fwd.block_m

    @property
    def block_n(self) -> int:
        return self.fwd.block_n


def _sm_count(device: torch.device) -> int:
    return target_info(device)[2]  # interpreter: 4, so the split path is exercised on CPU too


MAX_HEAD_DIM = 512

# fp16/bf16 tiles, every one compiled spill-free by ptxas 12.8 for sm_80 / sm_86 / sm_89 / sm_90 with
# every flag (masks, bias with its gradient, dropout); benchmarks/compile_check.py fails on any spill.
# Forward and dQ: (head-dim block, BLOCK_M) -> (BLOCK_N, num_warps, num_stages); BLOCK_M follows the
# packed rows up to _ROW_CAP. dK/dV: head-dim block -> (BLOCK_M rows per step of its loop over the
# group's rows, BLOCK_N keys per program, num_warps, num_stages). _SM90: sm_90's entries that differ.
_FWD = {**{(bd, bm): (64, 4, 2) for bd in (16, 32, 64, 128) for bm in (16, 32, 64)},
        (16, 128): (64, 8, 2), (32, 128): (64, 8, 2), (64, 64): (64, 4, 1), (64, 128): (64, 8, 1),
        (128, 64): (64, 8, 2), (256, 16): (32, 4, 2), (256, 32): (32, 4, 2), (256, 64): (32, 8, 2),
        (512, 16): (32, 8, 2), (512, 32): (32, 8, 1)}
_DQ = {**{(bd, bm): (64, 4, 2) for bd in (16, 32, 64) for bm in (16, 32, 64)},
       (16, 128): (64, 8, 2), (32, 128): (64, 8, 2), (64, 64): (32, 8, 2), (64, 128): (32, 8, 2),
       (128, 16): (64, 4, 2), (128, 32): (64, 8, 2), (256, 16): (32, 4, 2), (512, 16): (16, 8, 2)}
_DKDV = {16: (64, 64, 4, 2), 32: (32, 64, 4, 2), 64: (32, 32, 8, 2), 128: (32, 32, 8, 2), 256: (32, 32, 8, 2),
         512: (16, 16, 8, 1)}
_SM90 = dict(fwd={(64, 64): (64, 4, 2), (64, 128): (64, 8, 2), (128, 64): (64, 4, 2), (512, 32): (32, 8, 2)},
             dq={(64, 64): (64, 4, 2), (64, 128): (64, 8, 2), (512, 16): (32, 8, 2)},
             dkdv={32: (64, 64, 4, 2), 128: (32, 64, 8, 2)})
# largest BLOCK_M per head-dim block: the forward's (128 up to Dh 64, then 64; 32 at 512), dQ's
# smaller (it holds q, dO and the dq accumulator across the key loop)
_ROW_CAP = dict(fwd={16: 128, 32: 128, 64: 128, 128: 64, 256: 64, 512: 32},
                dq={16: 128, 32: 128, 64: 128, 128: 32, 256: 16, 512: 16})


def _row_block(rows: int, block_d: int, kind: str = "fwd") -> int:
    """BLOCK_M of a kernel whose programs own query rows: the packed rows, in [16, its cap]."""
    return min(max(16, next_pow2(rows)), _ROW_CAP[kind][block_d])


def _half_tiles(rows: int, block_d: int, cap: int) -> tuple[Tile, Tile, Tile]:
    """(forward, dQ, dK/dV) tiles of fp16/bf16 at this head-dim block on sm_<cap>."""
    sm90 = _SM90 if cap >= 90 else dict(fwd={}, dq={}, dkdv={})
    out = []
    for kind, table in (("fwd", _FWD), ("dq", _DQ)):
        bm = _row_block(rows, block_d, kind)
        out.append(Tile(bm, *sm90[kind].get((block_d, bm), table[block_d, bm])))
    return out[0], out[1], Tile(*sm90["dkdv"].get(block_d, _DKDV[block_d]))


def _shared_estimate(kind: str, t: Tile, bd: int, elem: int) -> int:
    """Upper estimate of one kernel's shared bytes: the streamed tiles of the pipelined stages (K, V
    in the forward / dQ; Q, dO in dK/dV) plus the resident ones and one score tile, with a 25 % margin
    (checked by benchmarks/compile_check.py on every target)."""
    streamed, resident = (t.block_n, t.block_m) if kind != "dkdv" else (t.block_m, t.block_n)
    buffers = max(1, t.num_stages - 1)
    return int((buffers * 2 * streamed * bd + 2 * resident * bd + 2 * t.block_m * t.block_n) * elem * 1.25)


def _shrink(t: Tile) -> Tile | None:
    """The next smaller tile: one stage, then the larger of BLOCK_M / BLOCK_N halved (>= 16)."""
    if t.num_stages > 1:
        return dataclasses.replace(t, num_stages=1)
    if max(t.block_m, t.block_n) <= 16:
        return None
    if t.block_m >= t.block_n:
        return dataclasses.replace(t, block_m=t.block_m // 2)
    return dataclasses.replace(t, block_n=t.block_n // 2)


def tiles(rows: int, dh: int, dtype: torch.dtype, device) -> tuple[tuple[Tile, Tile, Tile], str | None]:
    """((forward, dQ, dK/dV) tiles, None), or (the smallest tiles, why they do not fit the target's
    shared memory). fp16/bf16: the spill-free tables above. float32: the same tiles (32-wide at most
    on the exact "ieee" path), stages and tiles shrunk until each kernel's estimate fits."""
    block_d = max(16, next_pow2(dh))
    if interpreting():
        bm = _row_block(rows, block_d)
        return (Tile(bm, 32, 4, 1), Tile(_row_block(rows, block_d, "dq"), 32, 4, 1), Tile(bm, 32, 4, 1)), None
    cap, limit, _ = target_info(device)
    half = _half_tiles(rows, block_d, cap)
    if dtype != torch.float32:
        return half, None
    ieee = fp32_dot_precision() == "ieee"
    out = []
    for kind, t in zip(("fwd", "dq", "dkdv"), half):
        if ieee:
            t = dataclasses.replace(t, block_m=min(t.block_m, 32), block_n=min(t.block_n, 32))
        while _shared_estimate(kind, t, block_d, 4) > limit:
            smaller = _shrink(t)
            if smaller is None:
                return tuple(out + [t]), (f"float32 head dim {dh}: ~{_shared_estimate(kind, t, block_d, 4)} bytes of "
                                          f"shared memory with the smallest tiles ({t.block_m} x {t.block_n}), above "
                                          f"the {limit} of sm_{cap}")
            t = smaller
        out.append(t)
    return tuple(out), None


# Targets on which the fp16/bf16 dQ kernel at head dims 257-512 spills with key masks (kv_lens or
# key_padding_mask) and attn_bias together, with every tile tried (16 x 16 and 16 x 32, 4 / 8 / 16
# warps, 1 / 2 stages; ptxas 12.8): q and dO (16 x 512 each) are dot operands held across the key
# loop. Some query counts compile spill-free (other specialisations), most do not: the backward of
# those calls is refused there (auto picks another backend).
_WIDE_MASKED_BIAS_SPILLS = (86, 89, 90)


def refusal(rows: int, dh: int, dtype: torch.dtype, device, *, lq: int = 1, masks: bool = False,
            bias: bool = False, needs_grad: bool = False) -> list[str]:
    """Why the Triton kernels cannot run this head dim / dtype / call on the target (empty: they can)."""
    if dh > MAX_HEAD_DIM:
        return [f"head dim {dh} > {MAX_HEAD_DIM} (Triton kernels)"]
    why = tiles(rows, dh, dtype, device)[1]
    if why:
        return [why]
    cap = target_info(device)[0]
    if (dtype != torch.float32 and dh > 256 and masks and bias and needs_grad and not interpreting()
            and cap in _WIDE_MASKED_BIAS_SPILLS):
        return [f"{str(dtype).replace('torch.', '')} head dim {dh} backward with key masks and attn_bias together "
                f"spills registers on sm_{cap} (dQ kernel); use head dim <= 256 or backend='torch'"]
    return []


def plan(b: int, hkv: int, rows: int, lk: int, dh: int, device: torch.device, splits: int | None = None,
         dtype: torch.dtype = torch.float16) -> Plan:
    """Tiles and the key split for B * Hkv query groups of ``rows`` = (Hq / Hkv) * Lq packed rows.

    Tiles from ``tiles``; the keys are split when fewer than 2 programs per SM would run, each split
    keeping >= 2 key blocks of the forward (dQ reuses the split).
    """
    block_d = max(16, next_pow2(dh))
    (fwd, dq, dkdv), _ = tiles(rows, dh, dtype, device)
    n_blocks = triton.cdiv(lk, fwd.block_n)
    if splits is None:
        programs = b * hkv * triton.cdiv(rows, fwd.block_m)
        target = 2 * _sm_count(device)
        splits = 1 if programs >= target else min(triton.cdiv(target, programs), max(1, n_blocks // 2))
    splits = max(1, min(splits, n_blocks))
    keys_per_split = triton.cdiv(n_blocks, splits) * fwd.block_n
    splits = triton.cdiv(lk, keys_per_split)
    return Plan(block_d, fwd, dq, dkdv, splits, keys_per_split)


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
                               drop_scale, b * hq * lq * dh, b * hq * lq, **flags, **pl.fwd.launch(pl.block_d))
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
    dq_dtype = q.dtype if pl.splits == 1 else torch.float32
    dq = torch.empty(pl.splits, b, hq, lq, dh, dtype=dq_dtype, device=q.device)
    dbias = torch.zeros(b, hq, lq, lk, dtype=torch.float32, device=q.device) if bias_grad else None
    delta = torch.empty(b, hq, lq, dtype=torch.float32, device=q.device)  # rowsum(dout * out), from the dQ kernel
    with device_guard(q):
        _attn_bwd_dq_kernel[(triton.cdiv(g * lq, pl.dq.block_m), b * hkv, pl.splits)](
            *tensors, dout, out, lse, dq, delta, *common, hq, hkv, g, lq, lk, dh, pl.keys_per_split, scale,
            drop_scale, b * hq * lq * dh, **flags, **pl.dq.launch(pl.block_d))
        _attn_bwd_dkdv_kernel[(triton.cdiv(lk, pl.dkdv.block_n), b * hkv)](
            *tensors, dout, delta, lse, dk, dv, dbias, *common, hq, hkv, g, lq, lk, dh, scale, drop_scale, **flags,
            BIAS_GRAD=bias_grad, **pl.dkdv.launch(pl.block_d))
    dq = dq[0] if pl.splits == 1 else dq.sum(0).to(q.dtype)
    return dq, dk, dv, dbias
