"""Triton kernels of ``avfast.ops.affinity_topk``: GEMM tiles + running top-k, split-N partials + merge.

``topk_scores(a, b, bias, k, exclude_self)`` returns, for score(i, j) = a_i . b_j + bias_j, the k best
columns of every row (value desc, index asc; NaN counts as -inf; column i skipped for row i with
``exclude_self``). Two kernels:

- ``_affinity_partial_kernel``: program (row block, split, group) streams the split's column tiles,
  computes each (BLOCK_M, BLOCK_N) score tile with ``tl.dot`` over D, and folds it into K_PAD running
  slots per row: while some row's best remaining tile entry beats its worst slot, that entry replaces
  the slot. Slots are unordered; padding slots hold +inf so they are never replaced.
- ``_affinity_merge_kernel``: per row, the SPLITS x k partial candidates -> the k best, in order.

The B x N matrix never exists: memory is O(B x SPLITS x k).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from avfast.kernels.utils import device_guard, interpreting, next_pow2, target_info

MAX_TRITON_K = 128
_BIG = tl.constexpr(2**31 - 1)   # "no column" (Triton reads globals only as constexpr)
_MERGE_ELEMS = 8192   # candidates one merge program holds (rows x padded splits * k)


@triton.jit
def _worst_slot(slot_v, slot_i, slot_pos, K_PAD: tl.constexpr):
    """Per row: the worst slot (lowest value, then highest index) and its position."""
    worst_v = tl.min(slot_v, axis=1)
    is_w = slot_v == worst_v[:, None]
    worst_i = tl.max(tl.where(is_w, slot_i, -1), axis=1)
    wpos = tl.min(tl.where(is_w & (slot_i == worst_i[:, None]), slot_pos[None, :], K_PAD), axis=1)
    return worst_v, worst_i, wpos


@triton.jit
def _affinity_partial_kernel(
    a_ptr, b_ptr, bias_ptr, out_v_ptr, out_i_ptr,
    B, N, D, span, k,
    stride_ag, stride_am, stride_bg, stride_bn, stride_biasg,
    HAS_BIAS: tl.constexpr, EXCLUDE_SELF: tl.constexpr, IEEE: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, K_PAD: tl.constexpr,
):
    pid_m, split, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    slot_pos = tl.arange(0, K_PAD)
    real_slot = slot_pos[None, :] < k
    slot_v = tl.where(real_slot, float("-inf"), float("inf")) + tl.zeros((BLOCK_M, K_PAD), tl.float32)
    slot_i = tl.where(real_slot, _BIG, -1) + tl.zeros((BLOCK_M, K_PAD), tl.int32)
    # 64-bit row offsets: a gallery of N x D may pass 2**31 elements
    a_base = a_ptr + g.to(tl.int64) * stride_ag + rows.to(tl.int64)[:, None] * stride_am
    c_start = split * span
    c_end = tl.minimum(N, c_start + span)
    for c0 in range(c_start, c_end, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < c_end
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            a = tl.load(a_base + ds[None, :], mask=row_ok[:, None] & (ds[None, :] < D), other=0.0)
            bt = tl.load(b_ptr + g.to(tl.int64) * stride_bg + cols.to(tl.int64)[None, :] * stride_bn + ds[:, None],
                         mask=col_ok[None, :] & (ds[:, None] < D), other=0.0)
            if IEEE:
                acc = tl.dot(a, bt, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, bt, acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + g * stride_biasg + cols, mask=col_ok, other=0.0)[None, :]
        s = tl.where(acc != acc, float("-inf"), acc)
        avail = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_SELF:
            avail = avail & (cols[None, :] != rows[:, None])
        worst_v, worst_i, wpos = _worst_slot(slot_v, slot_i, slot_pos, K_PAD)
        go = tl.max(tl.where(avail, s, float("-inf")), axis=1) >= worst_v
        go = tl.max(go.to(tl.int32), axis=0) > 0
        while go:
            best_v = tl.max(tl.where(avail, s, float("-inf")), axis=1)
            best_i = tl.min(tl.where(avail & (s == best_v[:, None]), cols[None, :], _BIG), axis=1)
            beats = (best_i < _BIG) & ((best_v > worst_v) | ((best_v == worst_v) & (best_i < worst_i)))
            put = beats[:, None] & (slot_pos[None, :] == wpos[:, None])
            slot_v = tl.where(put, best_v[:, None], slot_v)
            slot_i = tl.where(put, best_i[:, None], slot_i)
            avail = avail & (cols[None, :] != best_i[:, None])
            worst_v, worst_i, wpos = _worst_slot(slot_v, slot_i, slot_pos, K_PAD)
            go = tl.max(beats.to(tl.int32), axis=0) > 0
    out = (g * B + rows[:, None]) * (SPLITS * K_PAD) + split * K_PAD + slot_pos[None, :]
    tl.store(out_v_ptr + out, slot_v, mask=row_ok[:, None])
    tl.store(out_i_ptr + out, slot_i, mask=row_ok[:, None])


@triton.jit
def _affinity_merge_kernel(
    in_v_ptr, in_i_ptr, out_v_ptr, out_i_ptr, B, k, M,
    BLOCK_M: tl.constexpr, M_PAD: tl.constexpr,
):
    """Per row: the k best of M partial candidates (value desc, index asc), written best first."""
    pid_m, g = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    pos = tl.arange(0, M_PAD)
    src = (g * B + rows[:, None]) * M + pos[None, :]
    ok = row_ok[:, None] & (pos[None, :] < M)
    v = tl.load(in_v_ptr + src, mask=ok, other=float("inf"))
    i = tl.load(in_i_ptr + src, mask=ok, other=-1)
    avail = ok & (i >= 0) & (i < _BIG)   # drops padding slots (+inf, -1) and empty slots (-inf, BIG)
    for t in range(0, k):
        best_v = tl.max(tl.where(avail, v, float("-inf")), axis=1)
        best_i = tl.min(tl.where(avail & (v == best_v[:, None]), i, _BIG), axis=1)
        dst = (g * B + rows) * k + t
        tl.store(out_v_ptr + dst, best_v, mask=row_ok)
        tl.store(out_i_ptr + dst, best_i, mask=row_ok)
        avail = avail & (i != best_i[:, None])


def _tiles(k_pad: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps): fewer rows per program as the slots grow."""
    if interpreting():
        return 16, 32, 32, 4
    block_m = 64 if k_pad <= 16 else 32 if k_pad <= 32 else 16  # 32 rows x 64 slots spill (bf16, sm_80/86/89)
    return block_m, 128, 32, 4


def _splits(programs: int, n: int, block_n: int, k_pad: int, device: torch.device) -> int:
    """Column splits so the grid fills the GPU: about 2 programs per SM, each >= 4 column tiles."""
    if interpreting():
        return min(2, triton.cdiv(n, block_n))
    sms = target_info(device)[2]
    want = triton.cdiv(2 * sms, max(programs, 1))
    return max(1, min(want, triton.cdiv(n, 4 * block_n), _MERGE_ELEMS // k_pad))


def topk_scores(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, k: int, exclude_self: bool,
                splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """a (G, B, D), b (G, N, D) (float32/float16/bfloat16), bias (G, N) float32 or None
    -> values (G, B, k) float32, indices (G, B, k) int64 of the k best a_i . b_j + bias_j."""
    if k > MAX_TRITON_K:
        raise ValueError(f"k={k} > {MAX_TRITON_K}")
    a, b = a.contiguous(), b.contiguous()
    G, B, D = a.shape
    N = b.shape[1]
    k_pad = next_pow2(k)
    block_m, block_n, block_d, warps = _tiles(k_pad)
    row_blocks = triton.cdiv(B, block_m)
    splits = splits or _splits(row_blocks * G, N, block_n, k_pad, a.device)
    span = triton.cdiv(triton.cdiv(N, splits), block_n) * block_n
    splits = triton.cdiv(N, span)
    part_v = torch.empty(G, B, splits * k_pad, dtype=torch.float32, device=a.device)
    part_i = torch.empty(G, B, splits * k_pad, dtype=torch.int32, device=a.device)
    bias_t = bias.float().contiguous() if bias is not None else part_v
    with device_guard(a):
        _affinity_partial_kernel[(row_blocks, splits, G)](
            a, b, bias_t, part_v, part_i, B, N, D, span, k,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), bias_t.stride(0) if bias is not None else 0,
            HAS_BIAS=bias is not None, EXCLUDE_SELF=exclude_self, IEEE=a.dtype == torch.float32, SPLITS=splits,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, K_PAD=k_pad, num_warps=warps,
        )
    values = torch.empty(G, B, k, dtype=torch.float32, device=a.device)
    indices = torch.empty(G, B, k, dtype=torch.int32, device=a.device)
    m = splits * k_pad
    merge_m = max(1, min(block_m, _MERGE_ELEMS // next_pow2(m)))
    with device_guard(a):
        _affinity_merge_kernel[(triton.cdiv(B, merge_m), G)](
            part_v, part_i, values, indices, B, k, m, BLOCK_M=merge_m, M_PAD=next_pow2(m), num_warps=warps,
        )
    return values, indices.long()
