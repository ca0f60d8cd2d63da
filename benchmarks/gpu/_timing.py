"""Timing helpers for the GPU benchmarks (CUDA events, peak memory, CUDA graphs)."""
from __future__ import annotations

import statistics
from typing import Callable

import torch


def time_ms(fn: Callable[[], object], *, warmup: int = 5, iters: int = 30) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_graph_ms(fn: Callable[[], object], *, iters: int = 30) -> float:
    """Median milliseconds of ``fn`` replayed from a captured CUDA graph (launch overhead removed)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, iters=iters)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def row(op: str, case: str, provider: str, ms: float, *, baseline: bool = False, **extra) -> dict:
    """One result row for ``gpu_report.py`` (extra: peak_MiB, TFLOP/s, GB/s, note...)."""
    return {"op": op, "case": case, "provider": provider, "ms": ms, "baseline": baseline, **extra}
