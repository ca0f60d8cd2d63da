"""CPU benchmarks of avfast.ops.cross_attention (fp32), for the record: the unfused reference
(baseline: masked_fill + softmax + matmul, as hand-written model code does), avfast's ``sdpa`` and
``torch`` backends and a direct ``F.scaled_dot_product_attention`` call with a boolean mask.

Throughput is GFLOP/s of the attention matmuls (forward 4 B H Lq Lk Dh, backward 2.5x that).
"""
import pytest
import torch
import torch.nn.functional as F

from _harness import run, size
from avfast.ops.attention import cross_attention, cross_attention_reference

# name: (B, H, Lq, Lk, Dh)
CASES = {
    "short-q B64 H8 Lq10 Lk196 D64": size((64, 8, 10, 196, 64), (8, 8, 10, 196, 64)),
    "long-k B16 H8 Lq64 Lk4096 D64": size((16, 8, 64, 4096, 64), (2, 8, 64, 4096, 64)),
}
PROVIDERS = {
    "reference (unfused torch)": lambda q, k, v, lens, kpm: cross_attention_reference(q, k, v, kv_lens=lens)[0],
    "avfast sdpa": lambda q, k, v, lens, kpm: cross_attention(q, k, v, kv_lens=lens, backend="sdpa"),
    "avfast torch": lambda q, k, v, lens, kpm: cross_attention(q, k, v, kv_lens=lens, backend="torch"),
    "F.sdpa bool mask": lambda q, k, v, lens, kpm: F.scaled_dot_product_attention(q, k, v, attn_mask=~kpm[:, None, None]),
}


def _inputs(case, grad):
    b, h, lq, lk, dh = case
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, dh, generator=g, requires_grad=grad) for n in (lq, lk, lk))
    lens = torch.randint(lk // 2, lk + 1, (b,), generator=g)
    kpm = torch.arange(lk)[None] >= lens[:, None]
    return q, k, v, lens, kpm


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES)
def test_cross_attention(benchmark, case, mode, provider):
    shape = CASES[case]
    if mode == "fwd+bwd" and case.startswith("long-k"):
        shape = (max(1, shape[0] // 4),) + shape[1:]
    grad = mode == "fwd+bwd"
    q, k, v, lens, kpm = _inputs(shape, grad)
    fn = PROVIDERS[provider]
    dout = torch.randn(q.shape)

    def step():
        if grad:
            torch.autograd.backward(fn(q, k, v, lens, kpm), dout)
        else:
            with torch.no_grad():
                fn(q, k, v, lens, kpm)

    b, h, lq, lk, dh = shape
    gflop = 4 * b * h * lq * lk * dh * (3.5 if grad else 1.0) / 1e9
    run(benchmark, step, group=f"cross_attention {mode} {case[:7]} {shape}", provider=provider,
        baseline=provider.startswith("reference"), items=gflop, unit="GFLOP")
