"""GPU benchmark of avfast.ops.contrastive_loss vs an open_clip-style ClipLoss (full logits).

Both sides take bfloat16 embeddings (B, 512) and accumulate in float32: the baseline computes the
bf16 logits matmul (fp32 accumulation in the tensor cores) and the cross-entropies in float32, as
open_clip's ClipLoss does under autocast. Cases: symmetric InfoNCE at B = 8k / 32k, with and without
same-source ids; then the largest batch each provider fits (doubling until out of memory).
Rows: fwd + bwd milliseconds and peak MiB above the inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from _timing import peak_mib, row, time_ms
from avfast.ops import contrastive_loss

D = 512
BATCHES = (8192, 32768)
MAX_BATCH = 1 << 20


class ClipLoss(torch.nn.Module):
    """open_clip-style loss: full (B, B) logits per direction, float32 cross-entropy."""

    def forward(self, a, b, logit_scale):
        logits_a = logit_scale * a @ b.T
        logits_b = logit_scale * b @ a.T
        labels = torch.arange(a.shape[0], device=a.device)
        return (F.cross_entropy(logits_a.float(), labels) + F.cross_entropy(logits_b.float(), labels)) / 2


def _inputs(batch: int, with_ids: bool):
    g = torch.Generator(device="cuda").manual_seed(0)
    a = F.normalize(torch.randn(batch, D, device="cuda", generator=g), dim=-1).bfloat16().requires_grad_()
    b = F.normalize(torch.randn(batch, D, device="cuda", generator=g), dim=-1).bfloat16().requires_grad_()
    ids = torch.randint(0, max(1, batch // 8), (batch,), device="cuda", generator=g) if with_ids else None
    return a, b, ids


def _providers(with_ids: bool):
    clip = ClipLoss()
    scale = torch.tensor(1 / 0.07, device="cuda")
    out = {}
    if not with_ids:
        out["open_clip ClipLoss"] = lambda a, b, ids: clip(a, b, scale)
    backends = ("triton", "chunked") if not with_ids else ("torch", "triton", "chunked")
    for backend in backends:
        out[f"avfast {backend}"] = (lambda be: lambda a, b, ids: contrastive_loss(
            a, b, normalize=False, source_ids=ids, source_weight=2.0 if ids is not None else 1.0, backend=be))(backend)
    return out


def _step(fn, a, b, ids):
    def go():
        a.grad = b.grad = None
        fn(a, b, ids).backward()
    return go


def _largest_batch(fn, with_ids: bool) -> int:
    batch, best = 8192, 0
    while batch <= MAX_BATCH:
        try:
            a, b, ids = _inputs(batch, with_ids)
            _step(fn, a, b, ids)()
            torch.cuda.synchronize()
            best = batch
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            a = b = ids = None
            torch.cuda.empty_cache()
        batch *= 2
    return best


def run() -> list[dict]:
    rows = []
    for with_ids in (False, True):
        for name, fn in _providers(with_ids).items():
            baseline = name.startswith("open_clip") or name == "avfast torch"  # ids: the full-logits reference
            for batch in BATCHES:
                case = f"infonce fwd+bwd B={batch} D={D} bf16" + (" source_ids" if with_ids else "")
                a, b, ids = _inputs(batch, with_ids)
                step = _step(fn, a, b, ids)
                try:
                    ms = time_ms(step, warmup=3, iters=10)
                    mib = peak_mib(step)
                except torch.cuda.OutOfMemoryError:
                    rows.append(row("contrastive_loss", case, name, float("nan"), baseline=baseline, note="OOM"))
                    continue
                finally:
                    torch.cuda.empty_cache()
                flops = 6 * 2 * batch * batch * D  # 2 logits GEMMs fwd + 4 bwd (open_clip count)
                rows.append(row("contrastive_loss", case, name, ms, baseline=baseline, peak_MiB=round(mib, 1),
                                TFLOPs=round(flops / ms / 1e9, 1)))
            if name == "avfast chunked":
                continue  # the fallback path: its largest batch matches triton's, at far more time
            largest = _largest_batch(fn, with_ids)
            rows.append(row("contrastive_loss", "largest batch fwd+bwd bf16" + (" source_ids" if with_ids else ""),
                            name, float("nan"), baseline=baseline, largest_batch=largest))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
