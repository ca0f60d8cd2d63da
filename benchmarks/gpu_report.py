"""GPU benchmark report: runs every ``benchmarks/gpu/bench_*.py`` and prints one table.

Each file defines ``run() -> list[dict]`` (rows made with ``_timing.row``); within one (op, case)
the speed-up is the baseline row's time over each row's time. Run on a CUDA machine:

    python benchmarks/gpu_report.py [--only mel,attention] [--json out.json] [--plot DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import traceback

HERE = pathlib.Path(__file__).resolve().parent
GPU_DIR = HERE / "gpu"


def discover(only: list[str] | None = None) -> list[pathlib.Path]:
    """The benchmark files under benchmarks/gpu/ (``bench_<name>.py``), filtered by name."""
    files = sorted(GPU_DIR.glob("bench_*.py"))
    if only:
        files = [f for f in files if f.stem[len("bench_"):] in only]
    return files


def load(path: pathlib.Path):
    sys.path.insert(0, str(GPU_DIR))
    spec = importlib.util.spec_from_file_location(f"avfast_gpu_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_speedups(rows: list[dict]) -> list[dict]:
    """Add ``speedup`` (baseline ms / ms) to each row that has a baseline in its (op, case)."""
    base = {(r["op"], r["case"]): r["ms"] for r in rows if r.get("baseline")}
    for r in rows:
        b = base.get((r["op"], r["case"]))
        r["speedup"] = b / r["ms"] if b and r["ms"] else None
    return rows


def format_rows(rows: list[dict]) -> str:
    extra_keys = sorted({k for r in rows for k in r} - {"op", "case", "provider", "ms", "baseline", "speedup"})
    head = ["op", "case", "provider", "ms", "speed-up", *extra_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        speed = "baseline" if r.get("baseline") else (f"{r['speedup']:.2f}x" if r.get("speedup") else "")
        extra = [f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in extra_keys]
        lines.append("| " + " | ".join([r["op"], r["case"], r["provider"], f"{r['ms']:.4f}", speed, *extra]) + " |")
    return "\n".join(lines)


def bar_rows(rows: list[dict]) -> list[dict]:
    """The report's rows in ``avfast.plot.plot_bench``'s form (one group per op and case)."""
    return [{"group": f"{r['op']}: {r['case']} (GPU)", "provider": r["provider"], "mean_s": r["ms"] / 1e3,
             "baseline": bool(r.get("baseline")), "speedup": r.get("speedup")} for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names (bench_<name>.py)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    parser.add_argument("--plot", default=None, metavar="DIR", help="draw each (op, case)'s bars here (PNG)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_report: no CUDA device; nothing to measure")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CUDA {torch.version.cuda}")
    rows, failed = [], []
    for path in discover([s for s in args.only.split(",") if s] or None):
        try:
            rows += load(path).run()
        except Exception:  # noqa: BLE001 - one broken file must not hide the others' numbers
            failed.append(path.name)
            traceback.print_exc()
    rows = with_speedups(rows)
    print(format_rows(rows) if rows else "no GPU benchmarks found")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot and rows:
        from avfast.plot import plot_bench

        for path in plot_bench(bar_rows(rows), args.plot):
            print(f"plot: {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
