"""Launch helpers shared by avfast's Triton kernels."""
from __future__ import annotations

import os

import triton

MAX_FUSED_SIZE = 65536


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU; keep blocks small)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return triton.next_power_of_2(max(int(n), 1))


def calculate_settings(n: int, *, max_block: int = MAX_FUSED_SIZE) -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) for a row of ``n`` elements processed by one program."""
    block = next_pow2(n)
    if block > max_block:
        raise ValueError(f"row of {n} elements exceeds the fused block limit {max_block}")
    num_warps = 4
    if block >= 32768:
        num_warps = 32
    elif block >= 8192:
        num_warps = 16
    elif block >= 2048:
        num_warps = 8
    return block, num_warps


def ensure_contiguous(*tensors):
    """The tensors made contiguous (None passes through)."""
    return tuple(t.contiguous() if t is not None else None for t in tensors)
