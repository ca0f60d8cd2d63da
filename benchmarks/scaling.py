"""Scaling curves measured in one run, saved as JSON (every row carries versions, device, date, commit)
and drawn as PNG (``avfast.plot.plot_scaling``). Long: not part of CI or ``avfast bench``.

- contrastive: InfoNCE fwd+bwd time and peak memory for batch 1k -> 64k, D 512: avfast (auto backend)
  vs the full-logits torch loss and open_clip's ClipLoss (where installed) while their B x B logits fit.
- topk: exact top-5 for N 8k -> 1M at B = 1k, D 256: avfast cpp vs mm + topk (while B x N fits) and
  faiss IndexFlatIP (where installed).
- mel: log-mel (event preset) for batch 1 -> 256 x 10 s: avfast (auto) vs the torch.stft chain
  (the reference).

Every point runs in a fresh process: inputs are built, the peak RSS is reset (Linux ``clear_refs``),
then the call is timed: the first call, then up to ``--reps`` more within ``--budget-s`` (median; at
least one, none past ``--single-call-s``: the row then says ``timed_calls: 1, includes_first_call: true``).
``op_peak_bytes`` is the process's peak resident memory during the calls above its resident memory
with the inputs built (the op's own working memory); ``peak_bytes`` is the whole process's peak.
A point whose predicted time (from the previous point and the curve's growth) passes ``--max-point-s``,
or a baseline whose B x N float32 matrix would pass ``--fit-gb``, is saved as a row with ``skipped``.

    python benchmarks/scaling.py --out benchmarks/results/scaling --threads 2 [--quick]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import peak_rss_subprocess  # noqa: E402

from avfast._bench import environment  # noqa: E402
from avfast.plot import plot_scaling  # noqa: E402

# Runs in the point's process after the setup code: times `stmt` and measures its memory.
_MEASURE = textwrap.dedent("""
    import statistics, sys, time
    sys.path.insert(0, BENCH_DIR)
    from _harness import proc_memory, reset_peak_rss
    base = reset_peak_rss()
    def _call():
        t0 = time.perf_counter()
        eval(STMT)
        return time.perf_counter() - t0
    first = _call()
    n = 0 if first > SINGLE else max(1, min(REPS, int(BUDGET // first)))
    more = [_call() for _ in range(n)]
    result.update(time_s=statistics.median(more) if more else first, first_call_s=first, timed_calls=max(1, n),
                  includes_first_call=not more, op_peak_bytes=None if base is None else proc_memory("VmHWM") - base)
""")

_UNIT = ("g = torch.Generator().manual_seed(0)\n"
         "def unit(n, d):\n    x = torch.randn(n, d, generator=g)\n    return x.div_(x.norm(dim=-1, keepdim=True))\n")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _has(module: str) -> bool:
    """Installed (found, not imported: importing open_clip pulls torchvision, its loss module does not)."""
    return importlib.util.find_spec(module) is not None


# Each case: (x value, provider, setup code, timed statement, None) or (x, provider, None, None, skip reason)
def _contrastive(sizes, fit_bytes):
    clip = _has("open_clip")
    for b in sizes:
        setup = ("import torch\nfrom avfast.ops import contrastive_loss, contrastive_loss_reference\n" + _UNIT +
                 f"a0, b0 = unit({b}, 512), unit({b}, 512)\n"
                 "def step(fn):\n    a, c = a0.clone().requires_grad_(), b0.clone().requires_grad_()\n    fn(a, c).backward()\n")
        yield b, "avfast contrastive_loss", setup, "step(lambda a, c: contrastive_loss(a, c, normalize=False))", None
        need = b * b * 4 * 3
        fits = need <= fit_bytes
        why = f"B x B logits and their gradients ({need / 2**30:.1f} GiB) pass the {fit_bytes / 2**30:.0f} GiB cap"
        yield (b, "full logits (torch reference)", setup,
               "step(lambda a, c: contrastive_loss_reference(a, c, normalize=False))", None if fits else why)
        if clip:
            load = ("import importlib.util, os\nspec = importlib.util.find_spec('open_clip')\n"
                    "m = importlib.util.spec_from_file_location('l', os.path.join(spec.submodule_search_locations[0], 'loss.py'))\n"
                    "mod = importlib.util.module_from_spec(m); m.loader.exec_module(mod); clip = mod.ClipLoss()\n")
            yield (b, "open_clip ClipLoss", setup + load, "step(lambda a, c: clip(a, c, torch.tensor(1 / 0.07)))",
                   None if fits else why)


def _topk(sizes, fit_bytes, b=1024):
    faiss = _has("faiss")
    for n in sizes:
        setup = "import torch\nfrom avfast.ops import affinity_topk\n" + _UNIT + f"x, y = unit({b}, 256), unit({n}, 256)\n"
        yield n, "avfast cpp", setup, "affinity_topk(x, y, 5, metric='dot', backend='cpp')", None
        need = b * n * 4
        yield (n, "mm + topk", setup, "(x @ y.T).topk(5, dim=-1)",
               None if need <= fit_bytes else f"B x N scores ({need / 2**30:.1f} GiB) pass the cap")
        if faiss:
            yield n, "faiss IndexFlatIP", setup + (
                "import faiss\nfaiss.omp_set_num_threads(torch.get_num_threads())\nindex = faiss.IndexFlatIP(256)\n"
                "index.add(y.numpy())\nxn = x.numpy()\n"), "index.search(xn, 5)", None


def _mel(sizes, fit_bytes):
    for b in sizes:
        setup = ("import torch\nfrom avfast.ops import mel_spectrogram, mel_spectrogram_reference\n"
                 "from avfast.ops._mel_config import MelConfig\ncfg = MelConfig.preset('event', freq_masks=0, time_masks=0)\n"
                 f"w = torch.randn({b}, 160000, generator=torch.Generator().manual_seed(0)).mul_(0.1)\n")
        yield b, "avfast mel_spectrogram", setup, "mel_spectrogram(w, cfg)", None
        yield b, "torch.stft chain (reference)", setup, "mel_spectrogram_reference(w, cfg)", None


# name: (cases, x label, full sizes, quick sizes, time growth per size step used to predict the next point)
CURVES = {
    "contrastive": (_contrastive, "batch", [1024, 2048, 4096, 8192, 16384, 32768, 65536], [256, 512, 1024], 4.0),
    "topk": (_topk, "N", [8192, 32768, 131072, 524288, 1048576], [2048, 8192], 2.0),
    "mel": (_mel, "batch", [1, 4, 16, 64, 256], [1, 4], 2.0),
}


def _predict(last: dict | None, value, growth: float) -> float | None:
    """Predicted seconds of one call at ``value`` from the provider's previous point (``growth`` per doubling)."""
    if last is None:
        return None
    return last["time_s"] * growth ** math.log2(value / last["x"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/scaling")
    p.add_argument("--curves", default=",".join(CURVES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=9, help="most timed calls after the first (fewer for slow points)")
    p.add_argument("--budget-s", type=float, default=20.0, help="time for the calls after the first, per point")
    p.add_argument("--single-call-s", type=float, default=60.0, help="a first call longer than this is the measurement")
    p.add_argument("--max-point-s", type=float, default=900.0, help="skip a point predicted to take longer")
    p.add_argument("--fit-gb", type=float, default=8.0, help="cap on a baseline's B x N matrices")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--note", default="", help="saved in every row (e.g. 'machine shared with other jobs')")
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**environment(), "threads": a.threads, "faiss": _version("faiss-cpu"),
           "open_clip": _version("open_clip_torch"), "note": a.note or None}
    consts = (f"REPS, BUDGET, SINGLE = {a.reps}, {a.budget_s}, {a.single_call_s}\n"
              f"BENCH_DIR = {str(Path(__file__).resolve().parent)!r}\n")
    for name in a.curves.split(","):
        make, x, full, quick, growth = CURVES[name]
        rows, last = [], {}
        for value, provider, setup, stmt, skip in make(quick if a.quick else full, a.fit_gb * 2**30):
            row = {"curve": name, "provider": provider, x: value, "time_s": None, "peak_bytes": None,
                   "op_peak_bytes": None, "stmt": stmt, "load_avg_1m": round(os.getloadavg()[0], 2), **env}
            predicted = _predict(last.get(provider), value, growth)
            if skip is None and predicted is not None and predicted * 2 > a.max_point_s:
                skip = f"predicted {predicted:.0f} s per call (x2 calls) passes --max-point-s {a.max_point_s:.0f}"
            if skip is not None:
                row["skipped"] = skip
                print(f"{name} {x}={value} {provider}: skipped ({skip})", flush=True)
            else:
                code = (f"import torch\ntorch.set_num_threads({a.threads})\n{setup}{consts}STMT = {stmt!r}\n{_MEASURE}")
                t0 = time.perf_counter()
                try:
                    row.update(peak_rss_subprocess(code, timeout=max(120.0, 3 * a.max_point_s)))
                except Exception as exc:  # a point that fails or times out is recorded, not fatal
                    row["skipped"] = f"failed: {str(exc)[-300:]}"
                row["wall_s"] = round(time.perf_counter() - t0, 1)
                if row["time_s"] is not None:
                    last[provider] = {"x": value, "time_s": row["time_s"]}
                print(f"{name} {x}={value} {provider}: {row['time_s']} s, op peak "
                      f"{(row['op_peak_bytes'] or 0) / 2**20:.0f} MiB ({row['wall_s']} s wall)", flush=True)
            rows.append(row)
            (out / f"{name}.json").write_text(json.dumps(rows, indent=1))   # saved after every point
        plot_scaling(rows, out / f"{name}.png", x=x, ys=("time_s", "op_peak_bytes"),
                     title=f"{name}: time per call and peak RSS above the inputs\n({env['device']}, {a.threads} threads, "
                           f"torch {env['torch']}, {env['commit']}, {env['date'][:10]})")
        print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}", flush=True)


if __name__ == "__main__":
    main()
