"""Launch helpers shared by avfast's Triton kernels."""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton

MAX_FUSED_SIZE = 65536


def interpreting() -> bool:
    """True when the kernels take interpreter-sized tiles: under ``TRITON_INTERPRET=1`` (kernels run on
    CPU), unless ``AVFAST_TRITON_TILES=gpu`` asks for the GPU's tiles there (the production
    configuration, tested on CPU with small shapes)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and not gpu_tiles_on_cpu()


def gpu_tiles_on_cpu() -> bool:
    """``AVFAST_TRITON_TILES=gpu``: the interpreter runs the tiles an sm_90 GPU would (see target_info)."""
    return os.environ.get("AVFAST_TRITON_TILES", "") == "gpu"


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


def target_info(device) -> tuple[int, int, int]:
    """(capability as 10 * major + minor, shared-memory bytes one block may use, SM count) of the
    target the kernels compile for: the stand-in target of a compile-only check, else the CUDA
    device, else (0, unlimited, 4) for the CPU interpreter."""
    from avfast.kernels import standin

    tgt = standin.active()
    if tgt is not None:
        return tgt.capability, tgt.shared_limit, tgt.sm_count
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_info(device.index if device.index is not None else torch.cuda.current_device())
    if gpu_tiles_on_cpu():
        return 90, standin.SHARED_LIMIT[90], 4  # sm_90's tiles, few SMs: key/column splits still happen
    return 0, 1 << 30, 4


@functools.lru_cache(maxsize=None)
def _cuda_info(index: int) -> tuple[int, int, int]:
    props = torch.cuda.get_device_properties(index)
    shared = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    return props.major * 10 + props.minor, int(shared), props.multi_processor_count


def device_guard(t: torch.Tensor):
    """Context in which Triton launches on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def fp32_dot_precision() -> str:
    """``input_precision`` of tl.dot on float32 operands, from ``torch.get_float32_matmul_precision()``:
    "highest" (torch's default) -> "ieee" (exact fp32; spills registers on big tiles, see
    benchmarks/RESULTS.md), "high" -> "tf32x3" (three TF32 products, about fp32 accuracy), "medium" -> "tf32"."""
    return {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}[torch.get_float32_matmul_precision()]


def register_cap(num_warps: int) -> int:
    """Registers per thread a launch of ``num_warps`` warps may use: 64K per SM shared by the block's
    threads, at most 255 (passed as Triton's ``maxnreg``, the PTX ``.maxnreg``)."""
    return min(255, 65536 // (32 * num_warps)) // 8 * 8 if num_warps > 8 else 255
