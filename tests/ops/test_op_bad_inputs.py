"""Bad and edge input on every public op: empty batches give empty results, N = 0 and device
mismatches are refused by name, NaN/inf rows and out-of-range kv_lens are named."""
import re

import pytest
import torch

from avfast.ops import affinity_topk, contrastive_loss, cross_attention, mel_spectrogram
from helpers import backends_for

META = torch.device("meta")   # a second device on a CPU-only machine: the checks fire before any compute


# Empty batches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", backends_for("affinity_topk", "cpu"))
def test_affinity_empty_batch(backend):
    y = torch.randn(10, 8)
    vals, idx, agg = affinity_topk(torch.randn(0, 8), y, 3, aggregate=True, backend=backend)
    assert vals.shape == idx.shape == (0, 3) and agg.shape == (0, 8) and idx.dtype == torch.long
    vals, idx = affinity_topk(torch.randn(2, 0, 8), torch.randn(2, 10, 8), 3, backend=backend)
    assert vals.shape == (2, 0, 3)


def test_affinity_empty_gallery_refused():
    with pytest.raises(ValueError, match=r"y has no rows \(N=0"):
        affinity_topk(torch.randn(4, 8), torch.randn(0, 8), 1)
    with pytest.raises(ValueError, match="N=0"):
        affinity_topk(torch.randn(0, 8), torch.randn(0, 8), 1)


@pytest.mark.parametrize("backend", backends_for("contrastive_loss", "cpu"))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_contrastive_empty_batch(backend, reduction):
    a = torch.randn(0, 8, requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = contrastive_loss(a, torch.randn(0, 8), logit_scale=scale, reduction=reduction, backend=backend)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert loss.sum().item() == 0.0
    loss.sum().backward()
    assert a.grad.shape == (0, 8) and scale.grad.item() == 0.0


@pytest.mark.parametrize("backend", backends_for("cross_attention", "cpu"))
def test_attention_empty_batch(backend):
    q = torch.randn(0, 4, 3, 8, requires_grad=True)
    k = torch.randn(0, 2, 5, 8)
    out = cross_attention(q, k, k, kv_lens=torch.zeros(0, dtype=torch.long), backend=backend)
    assert out.shape == (0, 4, 3, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape
    out, w = cross_attention(q, k, k, return_weights=True)
    assert w.shape == (0, 4, 3, 5)


@pytest.mark.parametrize("backend", backends_for("mel_spectrogram", "cpu"))
def test_mel_empty_batch(backend):
    full = mel_spectrogram(torch.randn(1, 16000), "event", backend=backend)
    out = mel_spectrogram(torch.randn(0, 16000), "event", backend=backend)
    assert out.shape == (0,) + full.shape[1:]
    out = mel_spectrogram(torch.randn(0, 2, 16000), "event", lengths=torch.zeros(0, dtype=torch.long), backend=backend)
    assert out.shape == (0, 2) + full.shape[1:]


# NaN / inf and ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["a", "b"])
def test_contrastive_nonfinite_row_named(bad, side):
    x = {"a": torch.randn(6, 4), "b": torch.randn(6, 4)}
    x[side][3, 1] = bad
    with pytest.raises(ValueError, match=rf"{side} has NaN or inf \(first in row 3\)"):
        contrastive_loss(x["a"], x["b"])


def test_contrastive_nonfinite_check_skipped_under_compile():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    a[1] = float("nan")
    compiled = torch.compile(lambda a, b: contrastive_loss(a, b, backend="torch"), backend="eager", fullgraph=False)
    assert torch.isnan(compiled(a, b))   # no error: the check is skipped, NaN propagates


@pytest.mark.parametrize("lens,where", [([6, 2], "kv_lens[0]=6"), ([3, -1], "kv_lens[1]=-1")])
def test_attention_kv_lens_out_of_range(lens, where):
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 5, 8)
    with pytest.raises(ValueError, match=r"kv_lens must lie in \[0, Lk=5\], got " + re.escape(where)):
        cross_attention(q, k, k, kv_lens=torch.tensor(lens))
    # the bounds themselves are fine: 0 keys give zeros, Lk keys are all of them
    out = cross_attention(q, k, k, kv_lens=torch.tensor([0, 5]))
    assert out[0].abs().max() == 0 and torch.isfinite(out).all()


# Device mismatches ------------------------------------------------------------------------------


def test_device_mismatch_named_on_every_op():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="y is on meta, x on cpu"):
        affinity_topk(x, x.to(META), 2)
    with pytest.raises(ValueError, match="values is on meta"):
        affinity_topk(x, x, 2, aggregate=True, values=x.to(META))
    with pytest.raises(ValueError, match="different devices"):
        contrastive_loss(x, x.to(META))
    with pytest.raises(ValueError, match="positive_ids is on meta"):
        contrastive_loss(x, x, positive_ids=torch.arange(4, device=META))
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 5, 8)
    for kwargs in (dict(k=k.to(META), v=k.to(META)), dict(kv_lens=torch.tensor([1, 2], device=META)),
                   dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool, device=META)),
                   dict(attn_bias=torch.zeros(2, 1, 3, 5, device=META))):
        args = dict(k=k, v=k) | kwargs
        with pytest.raises(ValueError, match="one device"):
            cross_attention(q, args.pop("k"), args.pop("v"), **args)
