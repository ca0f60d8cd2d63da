"""AVST (seed 003): shapes, spatial grounding through ops.cross_attention, temporal grounding equals
nn.MultiheadAttention, the loss formula, the ablation ladder and bad inputs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avfast._backend import select
from avfast.models.avst import (ABLATIONS, AVSTConfig, AVSTLoss, avst_tiny, build_avst, negative_visual,
                                spatial_grounding)
from avfast.models.resnet2d import resnet18, resnet18_tiny


def _inputs(b=2, t=10, dim=64, hw=4, audio_dim=128, vocab=93, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, t, audio_dim, generator=g)
    visual = torch.randn(b, t, dim, hw, hw, generator=g)
    question = torch.randint(1, vocab, (b, 7), generator=g)
    question[0, 5:] = 0  # padding
    return audio, visual, question


def test_paper_sizes_shapes():
    model = build_avst().eval()
    audio, visual, question = _inputs(b=2, dim=512, hw=14)
    with torch.no_grad():
        out = model(audio, visual, question, visual_neg=negative_visual(visual), return_maps=True)
    assert out["logits"].shape == (2, 42)
    assert out["match_pos"].shape == out["match_neg"].shape == (20, 2)
    assert out["maps"].shape == (2, 10, 196)
    assert out["temporal"]["audio"].shape == out["temporal"]["visual"].shape == (2, 10)
    assert model.tg_audio.attn.num_heads == 4 and model.tg_audio.attn.embed_dim == 512


def test_grounding_uses_fused_cpu_backend_at_head_dim_512():
    q, k = torch.randn(20, 1, 1, 512, requires_grad=True), torch.randn(20, 1, 196, 512)
    impl = select("cross_attention", q, k, k, None, None, None, backend="auto", needs_grad=True, dropout_p=0.0,
                  bias_grad=False)
    assert impl.name == "sdpa"


@pytest.mark.parametrize("backend", ["auto", "torch", "sdpa"])
def test_spatial_grounding_maps_are_dense_softmax_of_unscaled_cosines(backend):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20, 512, generator=g, dtype=torch.float64).float().requires_grad_()
    v = (torch.randn(20, 196, 512, generator=g) * 3).requires_grad_()
    att, maps = spatial_grounding(a, v, return_maps=True, backend=backend)
    torch.testing.assert_close(maps.sum(-1), torch.ones(20))
    an, vn = a / a.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    scores = (vn @ an[:, :, None])[..., 0]  # scale 1: no 1/sqrt(512)
    dense = torch.softmax(scores, -1)
    torch.testing.assert_close(maps, dense)
    torch.testing.assert_close(att, (dense[:, None] @ vn)[:, 0], atol=1e-5, rtol=1e-4)
    # gradients of the fused path equal those of the dense formula
    ga = torch.autograd.grad(att.square().sum(), (a, v))
    gd = torch.autograd.grad((dense[:, None] @ vn)[:, 0].square().sum(), (a, v))
    for x, y in zip(ga, gd):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-3)


def test_temporal_grounding_equals_multihead_attention():
    torch.manual_seed(0)
    model = build_avst(dropout=0.0).eval()
    tg = model.tg_audio.attn
    mha = nn.MultiheadAttention(512, 4, batch_first=True)
    mha.load_state_dict(tg.state_dict())
    q, seq = torch.randn(3, 1, 512), torch.randn(3, 10, 512)
    ours, w_ours = tg(q, seq, seq)
    ref, w_ref = mha(q, seq, seq)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w_ours, w_ref, atol=1e-6, rtol=1e-5)
    ours_fused, _ = tg(q, seq, seq, need_weights=False)
    torch.testing.assert_close(ours_fused, ref, atol=1e-5, rtol=1e-4)


def test_loss_is_ce_qa_plus_half_ce_match():
    g = torch.Generator().manual_seed(2)
    out = {"logits": torch.randn(4, 42, generator=g), "match_pos": torch.randn(40, 2, generator=g),
           "match_neg": torch.randn(40, 2, generator=g)}
    answers = torch.randint(0, 42, (4,), generator=g)
    total, terms = AVSTLoss()(out, answers)
    lp = torch.log_softmax(out["logits"], -1)
    ce_qa = -lp[torch.arange(4), answers].mean()
    ce_match = -(torch.log_softmax(out["match_pos"], -1)[:, 1].sum()
                 + torch.log_softmax(out["match_neg"], -1)[:, 0].sum()) / 80
    torch.testing.assert_close(terms["qa"], ce_qa)
    torch.testing.assert_close(terms["match"], ce_match)
    torch.testing.assert_close(total, ce_qa + 0.5 * ce_match)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_ladder_builds_and_runs(ablation):
    model = avst_tiny(ablation=ablation)
    audio, visual, question = _inputs()
    out = model(audio, visual, question, visual_neg=negative_visual(visual))
    assert out["logits"].shape == (2, 42)
    assert ("match_neg" in out) == ABLATIONS[ablation][3]
    total, _ = AVSTLoss()(out, torch.tensor([0, 1]))
    total.backward()
    # inputs a rung does not use are not read: passing None works
    flags = ABLATIONS[ablation]
    model(audio if flags[0] else None, visual if flags[1] else None, question)


def test_frames_and_wave_inputs():
    model = avst_tiny(visual_input="frames", visual_width=8, audio_input="wave", segments=2)
    wave = torch.randn(2, 2, 16000) * 0.1
    frames = torch.randn(2, 2, 3, 64, 64)
    question = torch.randint(1, 93, (2, 5))
    out = model(wave, frames, question, return_maps=True)
    assert out["maps"].shape == (2, 2, 4)  # 64 / 32 = 2 -> 2 x 2 positions
    assert resnet18()(torch.randn(1, 3, 448, 448)).shape == (1, 512, 14, 14)
    assert resnet18_tiny(in_channels=1)(torch.randn(2, 1, 64, 64)).shape == (2, 64, 2, 2)


def test_bad_inputs_and_config():
    model = avst_tiny()
    audio, visual, question = _inputs()
    with pytest.raises(ValueError, match="audio"):
        model(audio[:, :5], visual, question)
    with pytest.raises(ValueError, match="visual"):
        model(audio, visual[:, :, :3], question)
    with pytest.raises(ValueError, match="token ids"):
        model(audio, visual, question.float())
    with pytest.raises(ValueError, match="token ids must be in"):
        model(audio, visual, question + 100)
    with pytest.raises(ValueError, match="spatial_grounding needs"):
        AVSTConfig(use_audio=False)
    with pytest.raises(ValueError, match="divisible"):
        AVSTConfig(dim=510)
    with pytest.raises(ValueError, match="unknown AVST ablation"):
        build_avst(ablation="sg_only")
    with pytest.raises(ValueError, match="at least 2 clips"):
        negative_visual(visual[:1])


def test_local_weights_strict(tmp_path):
    model = avst_tiny()
    path = tmp_path / "avst.pt"
    torch.save(model.state_dict(), path)
    again = avst_tiny(weights=path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    with pytest.raises(ValueError, match="missing keys"):
        avst_tiny(ablation="av_q", weights=path)
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        avst_tiny(weights=tmp_path / "none.pt")


def test_grounded_positions_follow_the_audio():
    """With visual maps where one position holds the audio's direction, SG attends there most."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 64, generator=g)
    v = torch.randn(5, 16, 64, generator=g)
    idx = torch.tensor([0, 3, 7, 11, 15])
    v[torch.arange(5), idx] = a * 2
    _, maps = spatial_grounding(a, v, return_maps=True)
    assert torch.equal(maps.argmax(-1), idx)
    assert torch.allclose(maps.max(-1).values, torch.exp(torch.tensor(1.0)) / torch.exp(
        F.normalize(v, dim=-1) @ F.normalize(a, dim=-1)[:, :, None]).sum((1, 2)), atol=1e-6)
