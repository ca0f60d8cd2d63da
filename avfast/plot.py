"""Pictures of runs and benchmarks (matplotlib, the optional ``plot`` extra: ``pip install avfast[plot]``).

- ``plot_run(run_dir)``: loss, lr and retrieval (R@k / recall / mAP-like) curves from
  ``run_dir/metrics.jsonl`` as PNGs next to it (``avfast plot RUN_DIR``; the trainer calls it at the end).
- ``plot_bench(rows, out_dir)``: one bar chart per benchmark group (avfast, our torch chain, the peers)
  from ``avfast._bench.ratio_rows`` (``avfast bench --plot DIR``).
- ``plot_scaling(rows, out_png, x=..., ys=...)``: time / memory curves of a scaling sweep, one line per
  provider (``benchmarks/scaling.py``; ``benchmarks/gpu_report.py`` can call it with GPU rows).

Without matplotlib every function logs one line saying the plots were skipped and returns [].
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["plot_run", "plot_bench", "plot_scaling", "read_metrics"]

_RETRIEVAL = re.compile(r"(^|[_/.])(r@\d+|recall|map|ndcg|acc)", re.IGNORECASE)


def _pyplot(log: Callable[[str], None]):
    try:
        import matplotlib
    except ImportError:
        log("plots skipped: matplotlib is not installed (pip install 'avfast[plot]')")
        return None
    matplotlib.use("Agg")   # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (blank and unreadable lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """``key`` against ``step``, sorted by step; where a step was logged twice (a resumed run repeats
    the steps after its checkpoint) the later record wins."""
    by_step = {}
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            by_step[r["step"]] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[x] for x in steps]


def _line_chart(plt, out: Path, title: str, series: dict[str, tuple[list, list]], ylabel: str, *, logy=False,
                xlabel="step") -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path, *, out_dir: str | Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Loss, lr and retrieval curves of a training run -> ``loss.png``, ``lr.png``, ``retrieval.png``.

    Reads ``run_dir/metrics.jsonl``; writes next to it (or into ``out_dir``). Returns the files written.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in {run_dir} (is it a training run's --out directory?)")
    plt = _pyplot(log)
    if plt is None:
        return []
    records = read_metrics(path)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    loss = {k: _series(records, k) for k in sorted({k for r in records for k in r})
            if (k == "loss" or k.endswith("_loss") or k.startswith("loss_")) and _series(records, k)[0]}
    if loss:
        written.append(_line_chart(plt, out_dir / "loss.png", f"loss ({run_dir.name})", loss, "loss"))
    lr = _series(records, "lr")
    if lr[0]:
        written.append(_line_chart(plt, out_dir / "lr.png", f"learning rate ({run_dir.name})", {"lr": lr}, "lr"))
    keys = sorted({k for r in records for k in r if _RETRIEVAL.search(k)})
    retrieval = {k: _series(records, k) for k in keys if _series(records, k)[0]}
    if retrieval:
        written.append(_line_chart(plt, out_dir / "retrieval.png", f"evaluation ({run_dir.name})", retrieval, "value"))
    if not written:
        log(f"plots skipped: {path} has no loss, lr or retrieval values yet")
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:80] or "group"


def plot_bench(rows: Iterable[dict], out_dir: str | Path, *, log: Callable[[str], None] = print) -> list[Path]:
    """One horizontal bar chart (time per call, speed-up vs the baseline in the labels) per group.

    ``rows``: ``avfast._bench.ratio_rows(pytest-benchmark JSON)``.
    """
    plt = _pyplot(log)
    if plt is None:
        return []
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, items in groups.items():
        items = sorted(items, key=lambda r: r["mean_s"], reverse=True)
        fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(items) + 1.4), dpi=100)
        colors = ["#888888" if r["baseline"] else ("#1f77b4" if r["provider"].startswith("avfast") else "#ff7f0e")
                  for r in items]
        ax.barh([r["provider"] for r in items], [r["mean_s"] * 1e3 for r in items], color=colors)
        for i, r in enumerate(items):
            label = "baseline" if r["baseline"] else (f"{r['speedup']:.2f}x" if r.get("speedup") else "")
            ax.text(r["mean_s"] * 1e3, i, f" {r['mean_s'] * 1e3:.1f} ms {label}", va="center", fontsize=8)
        ax.set_xlabel("time per call (ms), lower is better")
        ax.set_title(group, fontsize=9)
        ax.margins(x=0.35)
        fig.tight_layout()
        out = out_dir / f"{_slug(group)}.png"
        fig.savefig(out)
        plt.close(fig)
        written.append(out)
    return written


def plot_scaling(rows: Iterable[dict], out_png: str | Path, *, x: str, ys: tuple[str, ...] = ("time_s", "peak_bytes"),
                 title: str = "", log: Callable[[str], None] = print) -> list[Path]:
    """Scaling curves: ``rows`` of {provider, x, time_s, peak_bytes, ...} -> one panel per ``ys`` key,
    one line per provider, log-log axes. Rows missing a value (a provider that did not fit) leave a gap."""
    plt = _pyplot(log)
    if plt is None:
        return []
    rows = list(rows)
    providers = sorted({r["provider"] for r in rows})
    fig, axes = plt.subplots(1, len(ys), figsize=(5.2 * len(ys), 4.0), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], ys):
        for p in providers:
            pts = sorted((r[x], r[key]) for r in rows if r["provider"] == p and r.get(key) is not None)
            if pts:
                ax.plot([a for a, _ in pts], [b / (2**20 if key.endswith("bytes") else 1) for _, b in pts],
                        marker="o", label=p)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel=x, ylabel="peak MiB" if key.endswith("bytes") else ("seconds" if key.endswith("_s") else key))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return [out_png]
