"""Plots: each command writes a non-empty PNG from a small run; without matplotlib a log line says so."""
import json
import subprocess
import sys

import pytest

from avfast import _bench
from avfast.plot import plot_bench, plot_run, plot_scaling

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 1000


def _metrics(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "epoch": 0, "loss": 3.0 / s, "lr": 1e-3 * min(1, s / 3), "clips_per_s": 10.0} for s in range(1, 8)]
    rows.append({"step": 7, "epoch": 1, "val/R@1": 0.2, "val/R@5": 0.5})
    rows.append({"step": 14, "epoch": 2, "val/R@1": 0.3, "val/R@5": 0.6})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_plot_run_writes_loss_lr_and_retrieval(tmp_path):
    _metrics(tmp_path / "run")
    written = plot_run(tmp_path / "run", log=lambda m: None)
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "retrieval.png"]
    assert all(_is_png(p) for p in written)


def test_avfast_plot_command(tmp_path):
    _metrics(tmp_path / "run")
    p = subprocess.run([sys.executable, "-m", "avfast.cli", "plot", str(tmp_path / "run"), "--out", str(tmp_path / "pics")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert _is_png(tmp_path / "pics" / "loss.png") and "wrote" in p.stdout
    p = subprocess.run([sys.executable, "-m", "avfast.cli", "plot", str(tmp_path / "nothing")], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "no metrics.jsonl" in p.stderr


def test_plot_bench_from_benchmark_json(tmp_path):
    data = {"benchmarks": [
        {"group": "g1", "name": "a", "stats": {"mean": 0.2}, "extra_info": {"provider": "torch chain", "baseline": True}},
        {"group": "g1", "name": "b", "stats": {"mean": 0.05}, "extra_info": {"provider": "avfast cpp"}},
        {"group": "g1", "name": "c", "stats": {"mean": 0.1}, "extra_info": {"provider": "faiss"}},
    ]}
    written = plot_bench(_bench.ratio_rows(data), tmp_path, log=lambda m: None)
    assert [p.name for p in written] == ["g1.png"] and _is_png(written[0])


def test_bench_plot_option(tmp_path, monkeypatch):
    """``avfast bench --plot DIR`` passes the run's rows to plot_bench (the suite itself is not run here)."""
    data = {"benchmarks": [{"group": "g", "name": "a", "stats": {"mean": 0.1},
                            "extra_info": {"provider": "avfast", "baseline": True}}]}

    def fake_call(cmd, env, cwd):
        out = next(c.split("=", 1)[1] for c in cmd if c.startswith("--benchmark-json="))
        with open(out, "w") as f:
            json.dump(data, f)
        return 0

    monkeypatch.setattr(_bench.subprocess, "call", fake_call)
    assert _bench.run(["affinity"], quick=True, plot_dir=str(tmp_path / "bars")) == 0
    assert _is_png(tmp_path / "bars" / "g.png")


def test_plot_scaling(tmp_path):
    rows = [{"provider": p, "N": n, "time_s": n * f * 1e-6, "peak_bytes": n * 1024 * f}
            for p, f in (("avfast", 1), ("mm+topk", 3)) for n in (1024, 4096, 16384)]
    rows.append({"provider": "faiss", "N": 1024, "time_s": 0.01, "peak_bytes": None})
    (out,) = plot_scaling(rows, tmp_path / "s.png", x="N", title="top-k", log=lambda m: None)
    assert _is_png(out)


def test_without_matplotlib_a_log_line_says_skipped(tmp_path, monkeypatch):
    _metrics(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    lines = []
    assert plot_run(tmp_path, log=lines.append) == [] and plot_bench([], tmp_path, log=lines.append) == []
    assert lines and all("plots skipped: matplotlib is not installed" in l for l in lines)


def test_a_step_logged_twice_keeps_the_later_value():
    from avfast.plot import _series

    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 1.5},
               {"step": 2, "loss": 2.5}, {"step": 3, "loss": 1.0}, {"epoch": 1, "loss": 9.0}]  # resumed at step 1
    assert _series(records, "loss") == ([1, 2, 3], [3.0, 2.5, 1.0])


def test_gpu_report_rows_draw_bars(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_report

    rows = gpu_report.with_speedups([
        {"op": "mel", "case": "32x10s", "provider": "torch", "ms": 4.0, "baseline": True},
        {"op": "mel", "case": "32x10s", "provider": "avfast triton", "ms": 1.0}])
    bars = gpu_report.bar_rows(rows)
    assert [r["speedup"] for r in bars] == [1.0, 4.0] and bars[0]["mean_s"] == 0.004
    (png,) = plot_bench(bars, tmp_path)
    assert png.stat().st_size > 1000
