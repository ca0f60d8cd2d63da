"""GPU benchmark of avfast.ops.cross_attention (Triton) against PyTorch SDPA's backends (bf16).

Cases (the issue's): short queries over ViT patches (B 64, H 8, Lq 10, Lk 196, Dh 64), launch-bound,
timed eagerly and replayed from CUDA graphs (microseconds); long keys (B 16, H 8, Lq 64, Lk 4096);
both with per-sample key padding (SDPA gets the equivalent boolean mask, which its flash backend
cannot take); and an unmasked square shape (B 4, H 16, L 4096) against SDPA flash. Forward and
forward + backward; TFLOP/s from 4 B H Lq Lk Dh (x 3.5 with the backward). Baseline: SDPA's own
choice (``auto``) in each case.

    python benchmarks/gpu_report.py --only attention
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from _timing import peak_mib, row, time_graph_ms, time_ms
from avfast.ops.attention import cross_attention

DTYPE = torch.bfloat16
# name: (B, H, Lq, Lk, Dh, padded)
CASES = {
    "short-q B64 H8 Lq10 Lk196 D64": (64, 8, 10, 196, 64, False),
    "short-q padded B64 H8 Lq10 Lk196 D64": (64, 8, 10, 196, 64, True),
    "long-k B16 H8 Lq64 Lk4096 D64": (16, 8, 64, 4096, 64, False),
    "long-k padded B16 H8 Lq64 Lk4096 D64": (16, 8, 64, 4096, 64, True),
    "square B4 H16 L4096 D64": (4, 16, 4096, 4096, 64, False),
}
SDPA = {"sdpa auto": None, "sdpa flash": SDPBackend.FLASH_ATTENTION, "sdpa cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa mem-efficient": SDPBackend.EFFICIENT_ATTENTION}
LAUNCH_BOUND = ("short-q",)


def _inputs(b, h, lq, lk, dh, padded):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, dh, device="cuda", dtype=DTYPE, generator=g).requires_grad_() for n in (lq, lk, lk))
    lens = torch.randint(lk // 2, lk + 1, (b,), device="cuda", generator=g) if padded else None
    kpm = torch.arange(lk, device="cuda")[None] >= lens[:, None] if padded else None
    return q, k, v, lens, kpm


def _providers(q, k, v, lens, kpm):
    """name -> forward callable; SDPA gets the boolean keep-mask (True = attend) when padded."""
    fns = {"avfast triton": lambda: cross_attention(q, k, v, kv_lens=lens, backend="triton")}
    mask = None if kpm is None else ~kpm[:, None, None, :]
    for name, backend in SDPA.items():
        ctx = (lambda b=backend: sdpa_kernel([b])) if backend is not None else contextlib.nullcontext

        def fwd(ctx=ctx):
            with ctx():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        fns[name] = fwd
    return fns


def _no_grad(fwd):
    def fn():
        with torch.no_grad():
            return fwd()

    return fn


def _with_backward(fwd, q, k, v):
    dout = torch.randn(q.shape, device=q.device, dtype=q.dtype)
    return lambda: torch.autograd.grad(fwd(), (q, k, v), dout)


def run() -> list[dict]:
    rows = []
    for case, (b, h, lq, lk, dh, padded) in CASES.items():
        q, k, v, lens, kpm = _inputs(b, h, lq, lk, dh, padded)
        for mode in ("fwd", "fwd+bwd"):
            flops = 4 * b * h * lq * lk * dh * (3.5 if mode == "fwd+bwd" else 1.0)
            for name, fwd in _providers(q, k, v, lens, kpm).items():
                fn = _with_backward(fwd, q, k, v) if mode == "fwd+bwd" else _no_grad(fwd)
                label = f"{case} {mode}"
                try:
                    ms = time_ms(fn)
                    mem = peak_mib(fn)
                except RuntimeError as exc:  # an SDPA backend that refuses these inputs
                    rows.append(row("cross_attention", label, name, float("nan"), note=str(exc).splitlines()[0][:80]))
                    continue
                extra = {"TFLOP/s": flops / ms / 1e9, "peak_MiB": mem, "us": ms * 1e3}
                rows.append(row("cross_attention", label, name, ms, baseline=name == "sdpa auto", **extra))
                if case.startswith(LAUNCH_BOUND):
                    try:
                        gms = time_graph_ms(fn)
                        rows.append(row("cross_attention", label + " (CUDA graph)", name, gms,
                                        baseline=name == "sdpa auto", us=gms * 1e3))
                    except RuntimeError as exc:
                        rows.append(row("cross_attention", label + " (CUDA graph)", name, float("nan"),
                                        note=str(exc).splitlines()[0][:80]))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
