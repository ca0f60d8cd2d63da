"""avfast.ops.affinity_topk(backend="cpp") against faiss-cpu IndexFlatIP, exact top-k, interleaved runs.

Both sides get the same pre-normalised float32 rows (cosine = inner product), the same thread count
(torch.set_num_threads and faiss.omp_set_num_threads), and run alternately ``--reps`` times; medians
are reported with the agreement of the returned indices. Not part of CI (needs faiss-cpu; minutes).

    python benchmarks/compare_faiss.py --threads 2 --json benchmarks/results/faiss_topk.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def measure(B: int, N: int, D: int, k: int, reps: int) -> dict:
    import faiss

    import avfast

    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    y = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    index = faiss.IndexFlatIP(D)
    index.add(y.numpy())
    xn = x.numpy()
    fns = {"faiss IndexFlatIP": lambda: index.search(xn, k),
           "avfast cpp": lambda: avfast.ops.affinity_topk(x, y, k, metric="dot", backend="cpp")}
    _, ref = fns["faiss IndexFlatIP"]()
    agree = (fns["avfast cpp"]()[1].numpy() == ref).mean()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"B": B, "N": N, "D": D, "k": k, "reps": reps, "median_s": med,
            "all_s": times, "speedup_vs_faiss": med["faiss IndexFlatIP"] / med["avfast cpp"],
            "index_agreement": float(agree)}


def main() -> None:
    from avfast._bench import environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--shapes", default="8192x8192,64x1048576", help="BxN pairs, comma separated")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    rows = []
    for shape in a.shapes.split(","):
        B, N = map(int, shape.split("x"))
        row = measure(B, N, a.dim, a.k, a.reps if N < 1 << 20 else max(3, a.reps // 2))
        row.update(environment(), threads=a.threads, faiss=faiss.__version__)
        rows.append(row)
        m = row["median_s"]
        print(f"B={B} N={N} D={a.dim} k={a.k} threads={a.threads}: faiss {m['faiss IndexFlatIP'] * 1e3:.1f} ms, "
              f"avfast cpp {m['avfast cpp'] * 1e3:.1f} ms -> {row['speedup_vs_faiss']:.2f}x "
              f"(indices agree {row['index_agreement']:.4f})", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
