"""GPU affinity top-k: avfast Triton / CUDA vs torch mm + topk, B = N = 65,536, D = 256, k = 5 (cosine).

Each precision against its twin: float32 (IEEE) vs torch float32 mm + topk; bf16 inputs vs torch bf16
mm + topk; the bf16 search + float32 re-rank mode (``compute_dtype=torch.bfloat16``) vs torch bf16 mm
+ topk, with its recall@k against the exact float32 result. Reports ms, TFLOP/s (2 B N D), peak extra
memory (the torch side holds the 16 GiB B x N float32 matrix) and recall@k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import peak_mib, row, time_ms

from avfast import available_backends
from avfast.ops import affinity_topk

B = N = 65536
D, K = 256, 5


def _mm_topk(x, y):
    return (F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T).topk(K, dim=-1)


def _recall(indices, exact):
    hits = 0
    for r0 in range(0, indices.shape[0], 8192):   # chunked: (rows, k, k) comparisons
        hits += (indices[r0:r0 + 8192].unsqueeze(-1) == exact[r0:r0 + 8192].unsqueeze(-2)).any(-1).sum().item()
    return hits / exact.numel()


def _measure(rows, case, provider, fn, exact, *, baseline=False):
    ms = time_ms(fn, warmup=2, iters=5)
    extra = {"TFLOP/s": 2.0 * B * N * D / (ms / 1e3) / 1e12, "peak_MiB": peak_mib(fn)}
    extra["recall@k"] = _recall(fn()[1], exact)
    rows.append(row("affinity_topk", case, provider, ms, baseline=baseline, **extra))


def run() -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, D, device="cuda", generator=g)
    y = torch.randn(N, D, device="cuda", generator=g)
    exact = _mm_topk(x, y).indices
    fused = [b for b in ("triton", "cuda") if b in available_backends("affinity_topk")]
    rows: list[dict] = []

    case = f"B=N={B} D={D} k={K} fp32"
    _measure(rows, case, "torch mm+topk fp32", lambda: _mm_topk(x, y), exact, baseline=True)
    for backend in fused:
        _measure(rows, case, f"avfast {backend} fp32", lambda: affinity_topk(x, y, K, backend=backend), exact)

    xb, yb = x.bfloat16(), y.bfloat16()
    case = f"B=N={B} D={D} k={K} bf16"
    _measure(rows, case, "torch mm+topk bf16", lambda: _mm_topk(xb, yb), exact, baseline=True)
    for backend in fused:
        _measure(rows, case, f"avfast {backend} bf16 inputs", lambda: affinity_topk(xb, yb, K, backend=backend), exact)
    if "triton" in fused:
        _measure(rows, case, "avfast triton bf16 search + fp32 re-rank",
                 lambda: affinity_topk(x, y, K, compute_dtype=torch.bfloat16, backend="triton"), exact)
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
