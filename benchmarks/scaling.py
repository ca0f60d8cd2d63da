"""Scaling curves measured in one run, saved as JSON (every row carries versions, device, date, commit)
and drawn as PNG (``avfast.plot.plot_scaling``). Long: not part of CI or ``avfast bench``.

- contrastive: InfoNCE fwd+bwd time and peak memory for batch 1k -> 64k, D 512: avfast (auto backend)
  vs the full-logits torch loss and open_clip's ClipLoss (where installed) while their B x B logits fit.
- topk: exact top-5 for N 8k -> 1M at B = 1k, D 256: avfast cpp vs mm + topk (while B x N fits) and
  faiss IndexFlatIP (where installed).
- mel: log-mel (event preset) for batch 1 -> 256 x 10 s: avfast (auto) vs torchaudio-free torch.stft chain
  (the reference).

Peak memory is the peak RSS of a fresh process per point (``--memory``; slow), else only time.

    python benchmarks/scaling.py --out benchmarks/results/scaling --threads 2 [--quick] [--memory]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import peak_rss_subprocess  # noqa: E402

from avfast._bench import environment  # noqa: E402
from avfast.plot import plot_scaling  # noqa: E402

FIT_BYTES = 8 << 30   # skip a baseline whose B x N float32 matrix would pass this


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Each case: (x value, provider, setup code for a fresh process and for this one, the timed statement)
def _contrastive(sizes):
    for b in sizes:
        setup = (f"import torch, torch.nn.functional as F\nfrom avfast.ops import contrastive_loss, contrastive_loss_reference\n"
                 f"g = torch.Generator().manual_seed(0)\na0 = F.normalize(torch.randn({b}, 512, generator=g), dim=-1)\n"
                 f"b0 = F.normalize(torch.randn({b}, 512, generator=g), dim=-1)\n"
                 "def step(fn):\n    a, c = a0.clone().requires_grad_(), b0.clone().requires_grad_()\n    fn(a, c).backward()\n")
        yield b, "avfast contrastive_loss", setup, "step(lambda a, c: contrastive_loss(a, c, normalize=False))"
        if b * b * 4 * 3 <= FIT_BYTES:
            yield b, "full logits (torch reference)", setup, "step(lambda a, c: contrastive_loss_reference(a, c, normalize=False))"
            try:
                import open_clip  # noqa: F401  (only to know whether to add the row)
            except Exception:
                continue
            clip = ("import importlib.util, os\nspec = importlib.util.find_spec('open_clip')\n"
                    "m = importlib.util.spec_from_file_location('l', os.path.join(spec.submodule_search_locations[0], 'loss.py'))\n"
                    "mod = importlib.util.module_from_spec(m); m.loader.exec_module(mod); clip = mod.ClipLoss()\n")
            yield b, "open_clip ClipLoss", setup + clip, "step(lambda a, c: clip(a, c, torch.tensor(1 / 0.07)))"


def _topk(sizes, b=1024):
    for n in sizes:
        setup = (f"import torch, torch.nn.functional as F\nfrom avfast.ops import affinity_topk\n"
                 f"g = torch.Generator().manual_seed(0)\nx = F.normalize(torch.randn({b}, 256, generator=g), dim=-1)\n"
                 f"y = F.normalize(torch.randn({n}, 256, generator=g), dim=-1)\n")
        yield n, "avfast cpp", setup, "affinity_topk(x, y, 5, metric='dot', backend='cpp')"
        if b * n * 4 <= FIT_BYTES:
            yield n, "mm + topk", setup, "(x @ y.T).topk(5, dim=-1)"
        try:
            import faiss  # noqa: F401
        except ImportError:
            continue
        yield n, "faiss IndexFlatIP", setup + (
            "import faiss\nfaiss.omp_set_num_threads(torch.get_num_threads())\nindex = faiss.IndexFlatIP(256)\n"
            "index.add(y.numpy())\nxn = x.numpy()\n"), "index.search(xn, 5)"


def _mel(sizes):
    for b in sizes:
        setup = (f"import torch\nfrom avfast.ops import mel_spectrogram, mel_spectrogram_reference\n"
                 f"from avfast.ops._mel_config import MelConfig\ncfg = MelConfig.preset('event', freq_masks=0, time_masks=0)\n"
                 f"w = torch.randn({b}, 160000, generator=torch.Generator().manual_seed(0)) * 0.1\n")
        yield b, "avfast mel_spectrogram", setup, "mel_spectrogram(w, cfg)"
        yield b, "torch.stft chain (reference)", setup, "mel_spectrogram_reference(w, cfg)"


CURVES = {
    "contrastive": (_contrastive, "batch", [1024, 2048, 4096, 8192, 16384, 32768, 65536], [256, 512, 1024]),
    "topk": (_topk, "N", [8192, 32768, 131072, 524288, 1048576], [2048, 8192]),
    "mel": (_mel, "batch", [1, 4, 16, 64, 256], [1, 4]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/scaling")
    p.add_argument("--curves", default=",".join(CURVES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--memory", action="store_true", help="also the peak RSS of a fresh process per point")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    for name in a.curves.split(","):
        make, x, full, quick = CURVES[name]
        rows = []
        for value, provider, setup, stmt in make(quick if a.quick else full):
            scope: dict = {}
            exec(setup, scope)
            row = {"curve": name, "provider": provider, x: value, "time_s": _time(lambda: eval(stmt, scope), a.reps),
                   "peak_bytes": None, **env}
            if a.memory:
                row["peak_bytes"] = peak_rss_subprocess(f"import torch\ntorch.set_num_threads({a.threads})\n{setup}{stmt}\n")["peak_bytes"]
            rows.append(row)
            print(f"{name} {x}={value} {provider}: {row['time_s'] * 1e3:.1f} ms", flush=True)
            del scope
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
        plot_scaling(rows, out / f"{name}.png", x=x, ys=("time_s", "peak_bytes") if a.memory else ("time_s",),
                     title=f"{name} ({env['device']}, {a.threads} threads, torch {env['torch']}, {env['commit']})")
        print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")


if __name__ == "__main__":
    main()
