"""CPU benchmarks of avfast.ops.contrastive_loss: fwd + bwd time and peak memory.

- speed: ``chunked`` and ``cpp`` (chunks + C++ tile kernels) vs the full-logits ``torch`` reference
  (the open_clip-style baseline), float32, symmetric InfoNCE with same-source hard negatives,
  B = 4096, D = 512 (quick: B = 1024).
- memory: peak RSS of a fresh process running fwd + bwd: ``torch`` vs ``cpp`` at B = 8192, and
  ``cpp`` (``chunked`` if not built) alone at B = 65,536 (the reference would need > 30 GB there).
  The big runs take minutes on 2 cores: they run only with AVFAST_RUN_SLOW=1.

    AVFAST_RUN_SLOW=1 python -m avfast.cli bench contrastive
"""
import os

import pytest
import torch

from _harness import peak_rss_subprocess, run, size
from avfast.ops import contrastive_loss

SLOW = os.environ.get("AVFAST_RUN_SLOW") == "1"
B, D = size(4096, 1024), 512


def _has_cpp():
    from avfast import available_backends

    return "cpp" in available_backends("contrastive_loss")


def _problem(b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, d, generator=g, requires_grad=True)
    y = torch.randn(b, d, generator=g, requires_grad=True)
    src = torch.randint(0, max(1, b // 8), (b,), generator=g)  # 1/8 of a batch per source on average
    return a, y, src


def _step(backend, a, b, src):
    a.grad = b.grad = None
    loss = contrastive_loss(a, b, source_ids=src, source_weight=2.0, backend=backend)
    loss.backward()
    return loss


@pytest.mark.parametrize("backend", ["torch", "chunked", "cpp"])
def test_fwd_bwd(benchmark, backend):
    if backend == "cpp" and not _has_cpp():
        pytest.skip("avfast._C without the contrastive tile kernels")
    a, b, src = _problem(B, D)
    run(benchmark, _step, backend, a, b, src, group=f"contrastive fwd+bwd B={B} D={D} fp32", provider=backend,
        baseline=backend == "torch", items=B, unit="rows")


_MEMORY_CODE = """
import resource, torch
from avfast.ops import contrastive_loss
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
a = torch.randn({b}, {d}, generator=g, requires_grad=True)
y = torch.randn({b}, {d}, generator=g, requires_grad=True)
src = torch.randint(0, max(1, {b} // 8), ({b},), generator=g)
result["inputs_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loss = contrastive_loss(a, y, source_ids=src, source_weight=2.0, backend="{backend}")
loss.backward()
result["loss"] = loss.item()
"""


def _memory(benchmark, backend, b, d):
    out = {}

    def measure():
        out.update(peak_rss_subprocess(_MEMORY_CODE.format(b=b, d=d, backend=backend,
                                                           threads=torch.get_num_threads())))

    benchmark.group = f"contrastive peak memory fwd+bwd B={b} D={d} fp32"
    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    extra = out["peak_bytes"] - out["inputs_rss_bytes"]
    benchmark.extra_info.update(provider=backend, baseline=backend == "torch", items=b, unit="rows",
                                peak_bytes=out["peak_bytes"], bytes_per_row=extra / b,
                                inputs_rss_bytes=out["inputs_rss_bytes"])
    print(f"\n{backend} B={b}: peak RSS {out['peak_bytes'] / 2**30:.2f} GiB, "
          f"{extra / b:,.0f} bytes/row above the process with its inputs")
    return out


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="memory runs: set AVFAST_RUN_SLOW=1")
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_peak_memory_8k(benchmark, backend):
    if backend == "cpp" and not _has_cpp():
        pytest.skip("avfast._C without the contrastive tile kernels")
    _memory(benchmark, backend, 8192, D)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="memory run (minutes on 2 cores): set AVFAST_RUN_SLOW=1")
def test_peak_memory_65k(benchmark):
    out = _memory(benchmark, "cpp" if _has_cpp() else "chunked", 65536, D)
    assert out["peak_bytes"] < 3 * 2**30, f"peak RSS {out['peak_bytes'] / 2**30:.2f} GiB >= 3 GiB"
