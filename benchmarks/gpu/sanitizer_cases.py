"""Tiny cases of every CUDA/Triton kernel for ``compute-sanitizer --tool memcheck`` (benchmarks/gpu/gpu_check.sh):
lengths, masks, key splits, exclude_self, dropout, GQA, odd sizes; each backend that is available."""
import torch

import avfast
from avfast.ops import affinity_topk, contrastive_loss, cross_attention, mel_spectrogram

dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
ran = []
for backend in ("triton", "cuda"):
    if backend in avfast.available_backends("affinity_topk"):
        x = torch.randn(37, 19, device=dev)
        for k, excl in ((1, False), (7, True), (33, False)):
            if backend == "cuda" and k > 32:
                continue
            affinity_topk(x, None, k, exclude_self=excl, backend=backend)
            ran.append(f"affinity {backend} k={k} exclude_self={excl}")
    if backend in avfast.available_backends("cross_attention"):
        for dtype in (torch.float16, torch.float32):
            q = torch.randn(3, 4, 5, 40, device=dev, dtype=dtype, requires_grad=backend == "triton")
            k = torch.randn(3, 2, 77, 40, device=dev, dtype=dtype, requires_grad=backend == "triton")
            v = torch.randn_like(k, requires_grad=backend == "triton")
            lens = torch.tensor([77, 3, 0], device=dev)
            kpm = torch.zeros(3, 77, dtype=torch.bool, device=dev)
            kpm[:, 5] = True
            drop = 0.1 if backend == "triton" else 0.0
            out = cross_attention(q, k, v, kv_lens=lens, key_padding_mask=kpm, dropout_p=drop, generator=g,
                                  backend=backend)
            if backend == "triton":
                out.float().sum().backward()
            ran.append(f"attention {backend} {dtype}")
    if backend in avfast.available_backends("mel_spectrogram"):
        wave = torch.randn(3, 7001, device=dev)
        mel_spectrogram(wave, "event", lengths=torch.tensor([7001, 4000, 1], device=dev), backend=backend)
        ran.append(f"mel {backend}")
if "triton" in avfast.available_backends("contrastive_loss"):
    a = torch.randn(33, 40, device=dev, requires_grad=True)
    b = torch.randn(33, 40, device=dev, requires_grad=True)
    ids = torch.arange(33, device=dev) // 2
    contrastive_loss(a, b, positive_ids=ids, source_ids=ids // 2, backend="triton").backward()
    contrastive_loss(a, b, kind="siglip", logit_bias=torch.zeros(1, device=dev), backend="triton").backward()
    ran.append("contrastive triton infonce+ids, siglip")
torch.cuda.synchronize()
print("sanitizer cases ran:", "; ".join(ran))
