"""DSE and CLM of seed 000's DCL: every loss term against its formula, CLM against a dense computation."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from avfast.models.dcl import (DSE, DCLConfig, DCLLossConfig, DSEConfig, DSELossConfig, CounterfactualModule,
                               build_pacs_model, dcl_objective, dse_loss, dynamic_augment, gaussian_kl,
                               late_fusion_baseline, late_fusion_dcl, mws_mutual_information, parameter_table,
                               static_augment)

TINY = dict(text_dim=6, video_dim=5, audio_dim=3, hidden=8, out_dim=4, dse_hidden=8, g_dim=4, rnn=6, f_dim=3,
            z_dim=2, dse_dropout=0.0, clm_dim=3, k=3)


def _batch(B=6, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"text": torch.randn(B, 6, generator=g), "video1": torch.randn(B, T, 5, generator=g),
            "video2": torch.randn(B, T, 5, generator=g), "audio1": torch.randn(B, T, 3, generator=g),
            "audio2": torch.randn(B, T, 3, generator=g), "label": torch.randint(0, 2, (B,), generator=g)}


def test_dse_shapes():
    dse = DSE(DSEConfig(input_dim=5, hidden=8, g_dim=4, rnn=6, f_dim=3, z_dim=2, dropout=0.0))
    out = dse(torch.randn(7, 4, 5))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"f_mean": (7, 3), "f_logvar": (7, 3), "f": (7, 3), "z_mean": (7, 4, 2), "z_logvar": (7, 4, 2),
                      "z": (7, 4, 2), "z_prior_mean": (7, 4, 2), "z_prior_logvar": (7, 4, 2), "recon": (7, 4, 5)}
    with pytest.raises(ValueError, match="expected a sequence"):
        dse(torch.randn(7, 5))


def test_dse_parameter_count_from_the_public_sizes():
    c = DSEConfig()            # input 768, hidden 256, g 128, rnn 256, f 256, z 32
    lstm = lambda i, h: 4 * h * (i + h) + 8 * h    # noqa: E731  weights + two biases
    lin = lambda i, o: i * o + o                   # noqa: E731
    expected = (lin(768, 256) + lin(256, 128) + 2 * lstm(128, 256) + 2 * lin(512, 256) + lstm(512, 256)
                + 2 * lin(256, 32) + lstm(32, 256) + 2 * lin(256, 32) + lin(288, 256) + lin(256, 768))
    assert sum(p.numel() for p in DSE(c).parameters()) == expected


def test_gaussian_kl_and_kl_f_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(3, 4, 2, generator=g) for _ in range(4))
    want = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).mean()
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), want)


def test_mws_mutual_information_equals_explicit_loops():
    g = torch.Generator().manual_seed(1)
    B, T, Fd, Zd = 4, 3, 2, 2
    f, fm, fl = torch.randn(B, Fd, generator=g), torch.randn(B, Fd, generator=g), torch.randn(B, Fd, generator=g) * 0.3
    z, zm, zl = (torch.randn(B, T, Zd, generator=g) for _ in range(3))
    N = 10

    def logq(v, m, lv):        # sum over dims of log N(v; m, e^lv)
        return float(Normal(m, (0.5 * lv).exp()).log_prob(v).sum())

    total = 0.0
    for t in range(T):
        for i in range(B):
            lf = [logq(f[i], fm[j], fl[j]) for j in range(B)]
            lz = [logq(z[i, t], zm[j, t], zl[j, t]) for j in range(B)]
            lse = lambda xs: math.log(sum(math.exp(x) for x in xs)) - math.log(N * B)   # noqa: E731
            total += max(lse([a + b for a, b in zip(lf, lz)]) - lse(lf) - lse(lz), 0.0)
    want = total / (T * B)
    got = mws_mutual_information(f, fm, fl, z, zm, zl, dataset_size=N)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_augmentations_keep_what_they_promise():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 4)
    s = static_augment(x, g)
    torch.testing.assert_close(s.sort(1).values, x.sort(1).values)      # same frames, other order
    d = dynamic_augment(x, 0.5, g)
    torch.testing.assert_close(d.diff(dim=1), x.diff(dim=1))            # frame-to-frame motion unchanged
    assert not torch.allclose(d, x)


def test_dse_loss_terms_equal_their_formulas_and_weights():
    torch.manual_seed(0)
    dse = DSE(DSEConfig(input_dim=5, hidden=8, g_dim=4, rnn=6, f_dim=3, z_dim=2, dropout=0.0))
    dse.eval()                                 # factors = means, so the formulas below are deterministic
    x = torch.randn(6, 4, 5)
    out = dse(x)
    cfg = DSELossConfig(recon=0.5, alpha=10, beta=7, gamma=2, theta=3, nce_tau=0.5, augment_noise=0.7)
    total, terms = dse_loss(dse, x, out, cfg, torch.Generator().manual_seed(3), backend="torch")
    torch.testing.assert_close(terms["recon"], ((out["recon"] - x) ** 2).mean())
    q_f = Normal(out["f_mean"], (0.5 * out["f_logvar"]).exp())
    kl_f = kl_divergence(q_f, Normal(0.0, 1.0)).sum(-1).mean() / (4 * 5)
    torch.testing.assert_close(terms["kl_f"], kl_f)
    kl_z = kl_divergence(Normal(out["z_mean"], (0.5 * out["z_logvar"]).exp()),
                         Normal(out["z_prior_mean"], (0.5 * out["z_prior_logvar"]).exp())).sum((1, 2)).mean() / (4 * 5)
    torch.testing.assert_close(terms["kl_z"], kl_z)
    # NCE: symmetric InfoNCE at tau 0.5 between the factors and those of the augmented sequences
    g = torch.Generator().manual_seed(3)
    f_aug = dse.encode(static_augment(x, g))["f_mean"]
    z_aug = dse.encode(dynamic_augment(x, 0.7, g))["z_mean"].flatten(1)

    def info_nce(a, b):
        logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.5
        target = torch.arange(a.shape[0])
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    torch.testing.assert_close(terms["nce_f"], info_nce(out["f_mean"], f_aug))
    torch.testing.assert_close(terms["nce_z"], info_nce(out["z_mean"].flatten(1), z_aug))
    want = (0.5 * terms["recon"] + 10 * terms["kl_f"] + 7 * terms["kl_z"] + 2 * terms["mi"]
            + 3 * (terms["nce_f"] + terms["nce_z"]))
    torch.testing.assert_close(total, want)


def test_dse_prior_is_autoregressive_over_z():
    torch.manual_seed(0)
    dse = DSE(DSEConfig(input_dim=5, hidden=8, g_dim=4, rnn=6, f_dim=3, z_dim=2, dropout=0.0))
    z = torch.randn(2, 4, 2)
    m, _ = dse.prior(z)
    z2 = z.clone()
    z2[:, 2] += 1.0
    m2, _ = dse.prior(z2)
    torch.testing.assert_close(m[:, :3], m2[:, :3])      # p(z_t | z_<t): steps 0..2 do not see z_2
    assert not torch.allclose(m[:, 3], m2[:, 3])


@pytest.mark.parametrize("k", [1, 3, 6])
def test_clm_equals_a_dense_computation_with_gradients(k):
    torch.manual_seed(0)
    clm = CounterfactualModule(4, 3, k=k, tau=2.0, intervention="none", backend="torch")
    z1, z2 = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    out = clm(z1, z2)
    X = clm.proj(torch.cat([z1, z2], -1))
    S = F.normalize(X, dim=-1) @ F.normalize(X, dim=-1).T
    vals, idx = S.topk(k, dim=-1)
    A = torch.zeros(6, 6).scatter(1, idx, torch.softmax((vals / 2.0).exp(), -1))
    dense = A @ X
    torch.testing.assert_close(torch.cat([out["x1"], out["x2"]], -1), dense, rtol=1e-5, atol=1e-6)
    if k == 1:   # "only itself": self stays in
        torch.testing.assert_close(dense, X)
    w = torch.randn(6, 6)
    g_ours = torch.autograd.grad((torch.cat([out["x1"], out["x2"]], -1) * w).sum(), (z1, z2, clm.proj.weight))
    g_dense = torch.autograd.grad((dense * w).sum(), (z1, z2, clm.proj.weight))
    for a, b in zip(g_ours, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_clm_counterfactual_rows_are_random_neighbour_mixtures():
    torch.manual_seed(0)
    clm = CounterfactualModule(4, 3, k=2, intervention="random", backend="torch")
    out = clm(torch.randn(5, 4), torch.randn(5, 4))
    assert out["x1_cf"].shape == (5, 3) and not torch.allclose(out["x1_cf"], out["x1"])


def test_intervened_features_reach_the_objective():
    torch.manual_seed(0)
    model = late_fusion_dcl(**TINY, backend="torch")
    batch = _batch()
    cfg = DCLLossConfig(counterfactual=0.0, dse_weight=0.0)           # the task loss alone
    model.eval()
    loss, _ = dcl_objective(model, batch, cfg)
    grad = torch.autograd.grad(loss, model.clm.proj.weight)[0]
    assert grad.abs().sum() > 0                                        # X' feeds the prediction
    with torch.no_grad():
        model.clm.proj.weight.mul_(10.0)
    scaled = dcl_objective(model, batch, cfg)[0]
    assert abs(float(scaled.detach() - loss.detach())) > 1e-4
    model.clm.k = 1                                                    # X' = X: another A, another loss
    assert abs(float(dcl_objective(model, batch, cfg)[0] - scaled)) > 1e-4


def test_dcl_objective_total_is_the_sum_of_its_parts():
    torch.manual_seed(0)
    model = late_fusion_dcl(**TINY, backend="torch")
    model.eval()
    batch = _batch()
    cfg = DCLLossConfig(counterfactual=0.5, dse_weight=2.0)
    loss, logs = dcl_objective(model, batch, cfg, torch.Generator().manual_seed(0))
    # the second object's augmentations continue the generator: recompute the whole sum with one generator
    g = torch.Generator().manual_seed(0)
    dse = model.dse["video"]
    parts = [dse_loss(dse, batch[f"video{w}"], dse(batch[f"video{w}"]), cfg, g, "torch")[0] for w in (1, 2)]
    want = logs["task"] + 0.5 * logs["counterfactual"] + 2.0 * (parts[0] + parts[1])
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-5, atol=1e-5)
    assert 0.0 <= float(logs["acc"]) <= 1.0


def test_ablation_switches_build_the_right_parts():
    assert late_fusion_baseline(**TINY).clm is None and len(late_fusion_baseline(**TINY).dse) == 0
    audio = build_pacs_model(**{**TINY, "dse": "audio", "clm": False})
    assert list(audio.dse) == ["audio"]
    clm_only = build_pacs_model(**{**TINY, "dse": "none", "clm": True})
    assert clm_only.clm.proj.in_features == 2 * 5                      # pooled video features
    out = clm_only(_batch())
    assert out["o1"].shape == (6, 4)
    with pytest.raises(ValueError, match="dse='audio' needs"):
        DCLConfig(variant="clip", dse="audio")
    with pytest.raises(ValueError, match="needs video1 as a sequence"):
        late_fusion_dcl(**TINY)(dict(_batch(), video1=torch.randn(6, 5)))


def test_parameter_table_on_meta():
    base = parameter_table(dse="none", clm=False)
    dcl = parameter_table()
    assert base["ViT-B/16"] == 86_389_248 and base["AST"] == 86_594_063
    assert base["DSE"] == base["CLM"] == 0
    assert dcl["DSE"] == sum(p.numel() for p in DSE(DSEConfig()).parameters())
    assert dcl["CLM"] == 2 * 32 * 512 + 512                         # Linear([z1, z2] -> 2 x 256)
    # text head 1024 -> 768 -> 768 with BatchNorm; fusion MLP takes [f 256 + z 32, audio 768, x' 256]
    assert dcl["text head"] == 2 * 1024 + 1024 * 768 + 768 + 768 * 768 + 768
    assert dcl["fusion MLP"] == 2 * 1312 + 1312 * 768 + 768 + 768 * 768 + 768
    assert base["total"] == sum(v for k, v in base.items() if k != "total")
    clip = parameter_table(variant="clip", video_dim=512, dse="none", clm=False)
    assert "AST" not in clip
