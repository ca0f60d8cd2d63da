"""Runs the pytest-benchmark suites in ``benchmarks/`` and turns their JSON into ratio tables.

Convention (``benchmarks/_harness.py`` sets it): every benchmark has a ``group`` and in its
``extra_info`` a ``provider`` name and ``baseline`` flag; ``items``/``unit`` give a throughput.
Within a group, speed-up = baseline mean time / provider mean time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def environment() -> dict:
    """What every saved benchmark row carries: versions, device, threads, UTC date and git commit."""
    import datetime
    import platform

    import torch

    import avfast

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "avfast": getattr(avfast, "__version__", None),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout avfast runs from (editable install or PYTHONPATH)."""
    root = Path(__file__).resolve().parent.parent
    path = root / "benchmarks"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no benchmarks/ next to {root}: `avfast bench` runs from a source checkout "
            "(git clone, then pip install --no-build-isolation -e .)"
        )
    return path


def ratio_rows(data: dict) -> list[dict]:
    """One row per benchmark: group, provider, mean seconds, speed-up vs the group's baseline."""
    by_group: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        by_group.setdefault(b.get("group") or b["name"], []).append(b)
    rows = []
    for group, items in sorted(by_group.items()):
        base = [b for b in items if b.get("extra_info", {}).get("baseline")]
        base_mean = base[0]["stats"]["mean"] if base else None
        for b in sorted(items, key=lambda b: b["stats"]["mean"]):
            info = b.get("extra_info", {})
            mean = b["stats"]["mean"]
            row = {
                "group": group,
                "provider": info.get("provider", b["name"]),
                "baseline": bool(info.get("baseline")),
                "mean_s": mean,
                "speedup": (base_mean / mean) if base_mean else None,
            }
            if info.get("items"):
                row["throughput"] = f"{info['items'] / mean:,.1f} {info.get('unit', 'items')}/s"
            if info.get("peak_bytes"):
                row["peak_MiB"] = info["peak_bytes"] / 2**20
            elif info.get("op_peak_bytes") is not None:
                row["op_peak_MiB"] = info["op_peak_bytes"] / 2**20
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``ratio_rows``; peak MiB is a fresh process's peak RSS, or ``+N``: the peak
    above the memory before the timed calls (the call's own working memory)."""
    lines = ["| group | provider | mean | speed-up vs baseline | throughput | peak MiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        speed = "baseline" if r["baseline"] else (f"{r['speedup']:.2f}x" if r["speedup"] else "n/a")
        peak = f"{r['peak_MiB']:.0f}" if r.get("peak_MiB") else (f"+{r['op_peak_MiB']:.0f}" if "op_peak_MiB" in r else "")
        lines.append(f"| {r['group']} | {r['provider']} | {r['mean_s'] * 1e3:.2f} ms | {speed} | {r.get('throughput', '')} | {peak} |")
    return "\n".join(lines)


def run(ops: list[str], *, quick: bool = False, json_path: str | None = None, plot_dir: str | None = None) -> int:
    """Run ``benchmarks/bench_<op>.py`` (all when ``ops`` is empty), print the ratio table and, with
    ``plot_dir``, draw each group's bars there (``avfast.plot.plot_bench``)."""
    bdir = benchmarks_dir()
    files = [bdir / f"bench_{op}.py" for op in ops] if ops else sorted(bdir.glob("bench_*.py"))
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        print(f"no such benchmark file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not files:
        print("no benchmarks in this build yet", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = json_path or os.path.join(tmp, "bench.json")
        env = dict(os.environ, AVFAST_BENCH_QUICK="1" if quick else os.environ.get("AVFAST_BENCH_QUICK", "0"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, files),
               f"--benchmark-json={out}", "--benchmark-disable-gc"]
        if quick:
            cmd += ["-m", "not slow"]
        code = subprocess.call(cmd, env=env, cwd=bdir.parent)
        if os.path.exists(out):
            with open(out) as f:
                rows = ratio_rows(json.load(f))
            print(format_table(rows))
            if plot_dir:
                from avfast.plot import plot_bench

                for path in plot_bench(rows, plot_dir):
                    print(f"wrote {path}")
    return code
