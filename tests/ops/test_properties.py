"""Property-based tests (hypothesis): every op against its reference over drawn shapes, dtypes and masks.

Examples are capped (``MAX_EXAMPLES``, no deadline) so the file stays fast in CI; the drawn data are
shapes, options and a seed for torch's generator (random floats, so exact ties are not drawn).
"""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from avfast.ops import affinity_topk, contrastive_loss, cross_attention, mel_spectrogram  # noqa: E402
from avfast.ops.affinity import METRICS, pair_scores  # noqa: E402
from avfast.ops.attention import cross_attention_reference  # noqa: E402
from avfast.ops.contrastive import contrastive_loss_reference  # noqa: E402
from avfast.ops.mel import mel_spectrogram_reference  # noqa: E402
from avfast.ops._mel_config import MelConfig  # noqa: E402
from helpers import assert_close, tol  # noqa: E402

MAX_EXAMPLES = 12
CAPPED = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True)
seeds = st.integers(0, 2**31 - 1)


def _randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@CAPPED
@given(b=st.integers(0, 9), n=st.integers(1, 40), d=st.integers(1, 12), k=st.integers(1, 6),
       metric=st.sampled_from(METRICS), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       exclude_self=st.booleans(), seed=seeds)
def test_affinity_topk_property(b, n, d, k, metric, dtype, exclude_self, seed):
    if exclude_self:
        n = b = max(b, k + 1)
    k = min(k, n - int(exclude_self))
    x, y = _randn((b, d), seed, dtype), _randn((n, d), seed + 1, dtype)
    y = x if exclude_self else y
    vals, idx = affinity_topk(x, None if exclude_self else y, k, metric=metric, exclude_self=exclude_self)
    ref_vals, ref_idx = affinity_topk(x, None if exclude_self else y, k, metric=metric, exclude_self=exclude_self,
                                      backend="torch")
    assert vals.shape == idx.shape == (b, k) and vals.dtype == x.dtype
    t = tol(dtype, 4 * max(1.0, float(ref_vals.float().abs().max()) if b else 1.0))
    assert_close(vals.float(), ref_vals.float(), **t, msg="values")
    # every chosen index really scores its value (indices may differ only among near-ties)
    assert_close(pair_scores(x[None], y[None], idx[None], metric)[0].float(), ref_vals.float(), **t, msg="scores")
    if b:
        assert (idx.sort(-1).values.diff(dim=-1) > 0).all()
        if exclude_self:
            assert not (idx == torch.arange(b)[:, None]).any()


@CAPPED
@given(b=st.integers(0, 16), d=st.integers(1, 16), dtype=st.sampled_from([torch.float32, torch.float64]),
       tau=st.floats(0.02, 2.0), symmetric=st.booleans(), with_pos=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=seeds)
def test_contrastive_loss_property(b, d, dtype, tau, symmetric, with_pos, reduction, seed):
    a, c = _randn((b, d), seed, dtype), _randn((b, d), seed + 1, dtype)
    pos = torch.randint(0, 3, (b,), generator=torch.Generator().manual_seed(seed)) if with_pos else None
    kw = dict(tau=tau, symmetric=symmetric, positive_ids=pos, reduction=reduction)
    out = contrastive_loss(a, c, **kw)
    if b == 0:
        assert out.shape == ((0,) if reduction == "none" else ()) and float(out.sum()) == 0.0
        return
    ref = contrastive_loss_reference(a, c, **kw)
    assert_close(out, ref, **tol(dtype, 10 * (b if reduction == "sum" else 1)), msg="loss")


@CAPPED
@given(b=st.integers(0, 3), hkv=st.integers(1, 2), group=st.integers(1, 2), lq=st.integers(1, 5),
       lk=st.integers(1, 9), dh=st.sampled_from([4, 8, 16]), mask=st.sampled_from(["none", "lens", "padding", "both"]),
       seed=seeds)
def test_cross_attention_property(b, hkv, group, lq, lk, dh, mask, seed):
    q = _randn((b, hkv * group, lq, dh), seed)
    k, v = _randn((b, hkv, lk, dh), seed + 1), _randn((b, hkv, lk, dh), seed + 2)
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, lk + 1, (b,), generator=gen) if mask in ("lens", "both") else None
    pad = torch.rand(b, lk, generator=gen) < 0.3 if mask in ("padding", "both") else None
    out = cross_attention(q, k, v, kv_lens=lens, key_padding_mask=pad)
    assert out.shape == q.shape and torch.isfinite(out).all()
    if b:
        ref, _ = cross_attention_reference(q, k, v, kv_lens=lens, key_padding_mask=pad)
        assert_close(out, ref, **tol(torch.float32, 10), msg="attention")


EVENT = MelConfig.preset("event", freq_masks=0, time_masks=0, target_frames=None)


@CAPPED
@given(b=st.integers(0, 3), extra=st.integers(0, 3000), with_lengths=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=seeds)
def test_mel_spectrogram_property(b, extra, with_lengths, dtype, seed):
    t = EVENT.min_length() + extra
    wave = _randn((b, t), seed, dtype) * 0.1
    lengths = None
    if with_lengths:
        lengths = torch.randint(EVENT.min_length(), t + 1, (b,), generator=torch.Generator().manual_seed(seed))
    out = mel_spectrogram(wave, EVENT, lengths=lengths)
    ref = mel_spectrogram_reference(wave, EVENT, lengths=lengths)
    assert out.shape == ref.shape
    assert_close(out, ref, **tol(torch.float32, 100), msg="log-mel")
