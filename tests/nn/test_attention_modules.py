"""avfast.nn.CrossModalAttention vs nn.MultiheadAttention (same state_dict), and the bidirectional block."""
import pytest
import torch
from torch import nn

from avfast.nn import BidirectionalCrossAttention, CrossModalAttention
from helpers import assert_close

CONFIGS = {
    "same-dim": dict(),
    "kdim-vdim": dict(kdim=12, vdim=20),
    "no-bias": dict(bias=False),
    "bias-kv": dict(add_bias_kv=True),
    "zero-attn": dict(add_zero_attn=True),
    "bias-kv-zero-attn-kdim": dict(add_bias_kv=True, add_zero_attn=True, kdim=12, vdim=12),
}
E, H = 16, 4


def _pair(**cfg):
    mha = nn.MultiheadAttention(E, H, batch_first=True, **cfg).double()
    ours = CrossModalAttention(E, H, **cfg).double()
    ours.load_state_dict(mha.state_dict(), strict=True)
    return mha, ours


def _data(cfg, b=3, lq=5, lk=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, E, generator=g, dtype=torch.float64)
    k = torch.randn(b, lk, cfg.get("kdim", E), generator=g, dtype=torch.float64)
    v = torch.randn(b, lk, cfg.get("vdim", E), generator=g, dtype=torch.float64)
    kpm = torch.arange(lk)[None] >= torch.tensor([lk, 4, 1])[:, None]
    return q, k, v, kpm


def _assert_same(mha, ours, args, kwargs, grads=True):
    a_out, a_w = mha(*args, **kwargs)
    b_out, b_w = ours(*args, **kwargs)
    assert_close(b_out, a_out, msg="attn_output")
    assert (a_w is None) == (b_w is None)
    if a_w is not None:
        assert_close(b_w, a_w, msg="attn_weights")
    if grads:
        g = torch.randn_like(a_out)
        a_grads = torch.autograd.grad(a_out, list(mha.parameters()), g)
        b_grads = torch.autograd.grad(b_out, list(ours.parameters()), g)
        for (name, _), x, y in zip(mha.named_parameters(), b_grads, a_grads):
            assert_close(x, y, msg=f"grad of {name}")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("need_weights", [True, False])
def test_matches_multihead_attention(name, need_weights):
    cfg = CONFIGS[name]
    mha, ours = _pair(**cfg)
    q, k, v, kpm = _data(cfg)
    _assert_same(mha, ours, (q, k, v), dict(key_padding_mask=kpm, need_weights=need_weights))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("mask_kind", ["bool2d", "float2d", "bool3d", "float-kpm"])
def test_masks_match_multihead_attention(mask_kind):
    mha, ours = _pair()
    q, k, v, kpm = _data({})
    g = torch.Generator().manual_seed(1)
    kwargs = {}
    if mask_kind == "bool2d":
        mask = torch.rand(5, 9, generator=g) < 0.3
        mask[:, 0] = False
        kwargs = dict(attn_mask=mask, key_padding_mask=kpm)
    elif mask_kind == "float2d":
        kwargs = dict(attn_mask=torch.randn(5, 9, generator=g, dtype=torch.float64), key_padding_mask=kpm)
    elif mask_kind == "bool3d":
        mask = torch.rand(3 * H, 5, 9, generator=g) < 0.3
        mask[..., 0] = False
        kwargs = dict(attn_mask=mask)
    else:
        kwargs = dict(key_padding_mask=torch.randn(3, 9, generator=g, dtype=torch.float64))
    _assert_same(mha, ours, (q, k, v), dict(kwargs, average_attn_weights=False))


def test_unbatched_and_sequence_first():
    mha, ours = _pair()
    q, k, v, _ = _data({})
    _assert_same(mha, ours, (q[0], k[0], v[0]), {}, grads=False)
    mha_sf = nn.MultiheadAttention(E, H, batch_first=False).double()
    ours_sf = CrossModalAttention(E, H, batch_first=False).double()
    ours_sf.load_state_dict(mha_sf.state_dict())
    _assert_same(mha_sf, ours_sf, (q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)), {}, grads=False)


def test_all_padded_sample_gives_zeros_not_nan():
    mha, ours = _pair()
    q, k, v, _ = _data({})
    kpm = torch.zeros(3, 9, dtype=torch.bool)
    kpm[1] = True
    out, w = ours(q, k, v, key_padding_mask=kpm)
    assert not out.isnan().any() and not w.isnan().any()
    # the attention output of the padded sample is zero, so the module returns out_proj's bias there
    assert_close(out[1], ours.out_proj.bias.expand(5, E))
    ref, _ = mha(q, k, v, key_padding_mask=kpm)
    assert ref[1].isnan().all()  # nn.MultiheadAttention gives NaN; other samples still agree
    assert_close(out[[0, 2]], ref[[0, 2]])
    out.sum().backward()
    assert all(not p.grad.isnan().any() for p in ours.parameters())


def test_kv_lens_equals_key_padding_mask():
    _, ours = _pair(add_bias_kv=True)
    q, k, v, kpm = _data({})
    lens = torch.tensor([9, 4, 1])
    a, _ = ours(q, k, v, key_padding_mask=kpm, need_weights=False)
    b, _ = ours(q, k, v, kv_lens=lens, need_weights=False)
    assert_close(a, b)


def test_fused_path_float32_close_to_mha():
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    ours = CrossModalAttention(E, H)
    ours.load_state_dict(mha.state_dict())
    q, k, v, kpm = (t.float() if t.is_floating_point() else t for t in _data({}))
    a, _ = mha(q, k, v, key_padding_mask=kpm, need_weights=False)
    b, _ = ours(q, k, v, key_padding_mask=kpm, need_weights=False)
    assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_dropout_only_in_training():
    ours = CrossModalAttention(E, H, dropout=0.5).double()
    q, k, v, _ = _data({})
    ours.eval()
    a, _ = ours(q, k, v, need_weights=False)
    b, _ = ours(q, k, v, need_weights=False)
    assert torch.equal(a, b)
    ours.train()
    c, _ = ours(q, k, v, need_weights=False)
    assert not torch.equal(a, c)


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible"):
        CrossModalAttention(10, 3)
    with pytest.raises(RuntimeError, match="is_causal"):
        CrossModalAttention(E, H)(*_data({})[:3], is_causal=True)


@pytest.mark.parametrize("norm_first", [False, True])
def test_bidirectional_block(norm_first):
    torch.manual_seed(0)
    block = BidirectionalCrossAttention(E, H, visual_dim=24, norm_first=norm_first).double()
    a = torch.randn(3, 5, E, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 9, 24, dtype=torch.float64, requires_grad=True)
    a_lens, v_lens = torch.tensor([5, 2, 1]), torch.tensor([9, 3, 0])
    a_out, v_out, (wa, wv) = block(a, v, a_lens=a_lens, v_lens=v_lens, need_weights=True)
    assert a_out.shape == a.shape and v_out.shape == v.shape
    assert wa.shape == (3, 5, 9) and wv.shape == (3, 9, 5)
    # composition of the two attentions with residual + LayerNorm, written out
    kpm_a, kpm_v = (torch.arange(n)[None] >= lens[:, None] for n, lens in ((5, a_lens), (9, v_lens)))
    qa, qv = (block.norm_a(a), block.norm_v(v)) if norm_first else (a, v)
    da, _ = block.attn_a2v(qa, qv, qv, key_padding_mask=kpm_v)
    dv, _ = block.attn_v2a(qv, qa, qa, key_padding_mask=kpm_a)
    exp_a = a + da if norm_first else block.norm_a(a + da)
    exp_v = v + dv if norm_first else block.norm_v(v + dv)
    assert_close(a_out, exp_a)
    assert_close(v_out, exp_v)
    assert not a_out.isnan().any()  # sample 2 has no visual tokens
    (a_out.sum() + v_out.sum()).backward()
    assert not a.grad.isnan().any() and not v.grad.isnan().any()
    fast = block(a, v, a_lens=a_lens, v_lens=v_lens)
    assert_close(fast[0], a_out) and assert_close(fast[1], v_out)


def test_modules_compile_fullgraph():
    from helpers import check_compiles

    m = CrossModalAttention(E, H, kdim=12, vdim=12)
    block = BidirectionalCrossAttention(E, H, visual_dim=12)
    q, k = torch.randn(2, 5, E), torch.randn(2, 9, 12)
    lens = torch.tensor([9, 3])
    check_compiles(lambda q, k: m(q, k, k, kv_lens=lens, need_weights=False)[0], q, k)
    check_compiles(lambda a, v: block(a, v, v_lens=lens)[0], q, k)
