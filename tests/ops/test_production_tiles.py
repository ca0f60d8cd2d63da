"""The Triton kernels at the tiles the GPU runs (AVFAST_TRITON_TILES=gpu), in the CPU interpreter.

The other interpreter tests use interpreter-sized tiles (``interpreting()`` switches); here every
kernel runs the constexprs an sm_90 plan picks, on small shapes, against the torch references.
"""
import pytest
import torch

from avfast.kernels import utils as kutils
from helpers import assert_close

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the production tiles natively")


@pytest.fixture(autouse=True)
def _gpu_tiles(monkeypatch):
    monkeypatch.setenv("AVFAST_TRITON_TILES", "gpu")
    assert not kutils.interpreting() and kutils.target_info("cpu")[0] == 90


def test_contrastive_gpu_tiles():
    from avfast.kernels import contrastive as K
    from avfast.ops import contrastive_loss, contrastive_loss_reference

    assert K._settings(64)["BLOCK_M"] == 64  # the GPU's tile, not the interpreter's 16
    g = torch.Generator().manual_seed(0)
    a = torch.randn(70, 40, generator=g, requires_grad=True)
    b = torch.randn(70, 40, generator=g, requires_grad=True)
    ids = torch.arange(70) // 3
    loss = contrastive_loss(a, b, positive_ids=ids, backend="triton")
    ref = contrastive_loss_reference(a.double(), b.double(), positive_ids=ids)
    assert_close(loss, ref.float(), atol=1e-5, rtol=1e-5)
    ga, gb = torch.autograd.grad(loss, (a, b))
    ra, rb = torch.autograd.grad(ref, (a, b))
    assert_close(ga, ra.float(), atol=1e-5, rtol=1e-4)
    assert_close(gb, rb.float(), atol=1e-5, rtol=1e-4)


def test_affinity_gpu_tiles():
    from avfast.kernels import affinity as K
    from avfast.ops import affinity_topk
    from avfast.ops.affinity import affinity_topk_reference

    assert K._tiles(8)[:2] == (64, 128)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(70, 48, generator=g)
    y = torch.randn(600, 48, generator=g)
    v, i = affinity_topk(x, y, 8, backend="triton")
    rv, ri = affinity_topk_reference(x[None], y[None], 8)
    assert torch.equal(i, ri[0])
    assert_close(v, rv[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lq,dh", [(1, 64), (40, 32)])
def test_attention_gpu_tiles(lq, dh):
    from avfast.kernels import attention as K
    from avfast.ops import cross_attention
    from avfast.ops.attention import cross_attention_reference

    pl = K.plan(2, 1, 2 * lq, 150, dh, torch.device("cpu"))
    assert pl.block_n == 64 and pl.block_m >= 16
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 2, lq, dh, generator=g, requires_grad=True)
    k = torch.randn(2, 1, 150, dh, generator=g, requires_grad=True)
    v = torch.randn(2, 1, 150, dh, generator=g, requires_grad=True)
    lens = torch.tensor([150, 77])
    out = cross_attention(q, k, v, kv_lens=lens, backend="triton")
    ref, _ = cross_attention_reference(q.double(), k.double(), v.double(), kv_lens=lens)
    assert_close(out, ref.float(), atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    rgrads = torch.autograd.grad(ref.sum(), (q, k, v))
    for got, want in zip(grads, rgrads):
        assert_close(got, want.float(), atol=1e-5, rtol=1e-4)


def test_mel_gpu_tiles():
    from avfast.ops import mel_spectrogram
    from avfast.ops.mel import mel_spectrogram_reference

    g = torch.Generator().manual_seed(3)
    wave = torch.randn(2, 4000, generator=g)
    lengths = torch.tensor([4000, 2500])
    out = mel_spectrogram(wave, "event", lengths=lengths, backend="triton")
    ref = mel_spectrogram_reference(wave.double(), "event", lengths=lengths, out_dtype=torch.float64)
    assert_close(out, ref.float(), atol=2e-3, rtol=1e-3)
