"""Shared pieces of the CPU benchmark suites (pytest-benchmark).

Each benchmark test times ONE provider and tags it; tests of one group (same inputs) time avfast and
its baseline in the same run, so ``avfast bench`` / ``benchmarks/report.py`` print their ratio.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

QUICK = os.environ.get("AVFAST_BENCH_QUICK", "0") == "1"


def size(full, quick):
    """``quick`` under ``avfast bench --quick`` / AVFAST_BENCH_QUICK=1, else ``full``."""
    return quick if QUICK else full


def run(benchmark, fn, *args, group: str, provider: str, baseline: bool = False, items: float | None = None,
        unit: str = "items", rounds: int = 5, peak: bool = False, **extra):
    """Time ``fn(*args)`` under ``group`` as ``provider``; ``items`` per call gives a throughput.

    ``peak=True`` also records ``op_peak_bytes``: the peak resident memory during the calls above the
    resident memory before them (the call's working memory; Linux only, else not recorded).
    """
    benchmark.group = group
    benchmark.extra_info.update(provider=provider, baseline=baseline, items=items, unit=unit, **extra)
    base = reset_peak_rss() if peak else None
    if QUICK:
        out = benchmark.pedantic(fn, args=args, rounds=1, iterations=1, warmup_rounds=0)
    else:
        out = benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=1)
    if base is not None:
        benchmark.extra_info["op_peak_bytes"] = proc_memory("VmHWM") - base
    return out


def proc_memory(key: str) -> int:
    """A memory line of /proc/self/status in bytes (``"VmRSS"``, ``"VmHWM"`` = peak RSS)."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> int | None:
    """Reset this process's peak RSS (Linux ``clear_refs``) and return the current RSS; None elsewhere."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)   # freed heap back to the OS: the base is live memory only
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_memory("VmRSS")
    except (OSError, StopIteration):
        return None


def peak_rss_subprocess(code: str, timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh Python and return ``{"peak_bytes": ru_maxrss, **result}``.

    ``code`` may set a dict ``result``; it is returned too. A fresh process makes the peak the
    code's own, not the test session's.
    """
    wrapper = textwrap.dedent(
        """
        import json, resource, sys
        result = {}
        exec(compile(sys.stdin.read(), "<bench>", "exec"))
        result["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("AVFAST_RESULT" + json.dumps(result))
        """
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], input=code, text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run failed:\n{proc.stderr[-4000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("AVFAST_RESULT")][-1]
    return json.loads(line[len("AVFAST_RESULT"):])


def train_step(loss_fn, optimizer):
    """A closure doing one optimizer step on ``loss_fn()`` (a scalar loss), synchronised on CUDA."""
    import torch

    def step():
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return step


def time_ops(step, targets) -> tuple[float, float]:
    """``(seconds of one step() call, seconds spent inside the ops it calls)``.

    ``targets``: ``(module name, attribute)`` pairs naming where the model looks the ops up (e.g.
    ``("avfast.models.dcl", "affinity_topk")``); each is wrapped by a timer for that one call and
    restored afterwards (the ops' share of the step: forward only, their backward runs in autograd).
    """
    import importlib
    import time

    import torch

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            spent[0] += time.perf_counter() - start
            return out

        return wrapper

    saved = []
    try:
        for module_name, name in targets:
            module = importlib.import_module(module_name)
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, timed(saved[-1][2]))
        start = time.perf_counter()
        step()
        return time.perf_counter() - start, spent[0]
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
