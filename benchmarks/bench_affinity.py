"""CPU benchmarks of avfast.ops.affinity_topk: time against torch mm + topk, and peak memory.

- speed: cosine top-5 of B = N = 8192 rows, D = 256 (quick: 2048), float32 in. Baseline: what a
  user writes, ``F.normalize`` + ``mm`` + ``topk`` (the whole B x N matrix). ``avfast cpp`` is exact;
  ``avfast cpp bf16 search`` finds max(4k, 64) candidates with a bf16 GEMM and re-ranks them in
  float32 (its recall@k against the exact search is recorded). A second group compares that mode
  with its twin, torch bf16 mm + topk (no re-rank).
- memory: peak RSS of a fresh process, ``cpp`` at B = N = 65,536 (the B x N float32 matrix alone
  would be 16 GiB). Minutes on 2 cores: runs only with AVFAST_RUN_SLOW=1.

    python -m avfast.cli bench affinity
    AVFAST_RUN_SLOW=1 python -m avfast.cli bench affinity
"""
import os

import pytest
import torch
import torch.nn.functional as F

from _harness import peak_rss_subprocess, run, size
from avfast.ops import affinity_topk

SLOW = os.environ.get("AVFAST_RUN_SLOW") == "1"
B, D, K = size(8192, 2048), 256, 5


def _problem(b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def _mm_topk(x, y, dtype=torch.float32):
    s = F.normalize(x, dim=-1).to(dtype) @ F.normalize(y, dim=-1).to(dtype).T
    return s.topk(K, dim=-1)


def _recall(indices, exact):
    return (indices.unsqueeze(-1) == exact.unsqueeze(-2)).any(-1).float().mean().item()


def _avfast(backend, compute_dtype=None):
    return lambda x, y: affinity_topk(x, y, K, backend=backend, compute_dtype=compute_dtype)


FP32 = f"affinity_topk cosine B=N={B} D={D} k={K} fp32 in"
BF16 = f"affinity_topk cosine B=N={B} D={D} k={K} bf16 GEMM"
# (group, provider, fn, baseline): each group times avfast against its baseline in the same run
CASES = [
    (FP32, "torch mm+topk", _mm_topk, True),
    (FP32, "avfast cpp", _avfast("cpp"), False),
    (FP32, "avfast cpp bf16 search", _avfast("cpp", torch.bfloat16), False),
    (FP32, "avfast torch (blocked reference)", _avfast("torch"), False),
    (BF16, "torch bf16 mm+topk", lambda x, y: _mm_topk(x, y, torch.bfloat16), True),
    (BF16, "avfast cpp bf16 search", _avfast("cpp", torch.bfloat16), False),
]


@pytest.mark.parametrize("group, provider, fn, baseline", CASES, ids=[f"{'bf16' if g == BF16 else 'fp32'}-{p}" for g, p, _, _ in CASES])
def test_affinity_vs_mm_topk(benchmark, group, provider, fn, baseline):
    x, y = _problem(B, D)
    out = run(benchmark, fn, x, y, group=group, provider=provider, baseline=baseline, items=B, unit="rows")
    benchmark.extra_info["recall_at_k"] = _recall(out[1], _mm_topk(x, y).indices)


_MEMORY_CODE = """
import resource, time, torch
from avfast.ops import affinity_topk
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
x = torch.randn({b}, {d}, generator=g)
y = torch.randn({b}, {d}, generator=g)
result["inputs_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
vals, idx = affinity_topk(x, y, {k}, backend="{backend}"{extra})
result["seconds"] = time.perf_counter() - start
result["shape"] = list(idx.shape)
"""


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="memory run (minutes on 2 cores): set AVFAST_RUN_SLOW=1")
@pytest.mark.parametrize("mode", ["exact", "bf16 search"])
def test_peak_memory_65k(benchmark, mode):
    b = 65536
    extra = ", compute_dtype=torch.bfloat16" if mode == "bf16 search" else ""
    out = {}

    def measure():
        out.update(peak_rss_subprocess(_MEMORY_CODE.format(b=b, d=D, k=K, backend="cpp", extra=extra,
                                                           threads=torch.get_num_threads())))

    benchmark.group = f"affinity_topk peak memory B=N={b} D={D} k={K}"
    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(provider=f"avfast cpp {mode}", baseline=False, items=b, unit="rows",
                                peak_bytes=out["peak_bytes"], inputs_rss_bytes=out["inputs_rss_bytes"],
                                seconds=out["seconds"])
    print(f"\ncpp {mode} B=N={b}: peak RSS {out['peak_bytes'] / 2**30:.2f} GiB "
          f"(inputs alone {out['inputs_rss_bytes'] / 2**30:.2f} GiB), {out['seconds']:.1f} s")
    assert out["peak_bytes"] < 2 * 2**30, f"peak RSS {out['peak_bytes'] / 2**30:.2f} GiB >= 2 GiB"
