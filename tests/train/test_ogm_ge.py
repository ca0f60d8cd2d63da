"""OGM-GE (seed 003): coefficients equal the formula on hand-made logits, only the chosen gradients
are scaled, the GE noise has the gradient's std, epoch range, fusion contributions."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from avfast.models.fusion import FUSIONS, build_fusion, two_encoder_tiny
from avfast.train.ogm_ge import OGMGE, OGMGEConfig, modality_scores, ogm_coefficients


def _trainer(model, epoch=0):
    return SimpleNamespace(model=model, epoch=epoch, dist=SimpleNamespace(distributed=False))


# hand-made logits: audio confident and right, visual unsure
OUT_A = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
OUT_V = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0]])
LABELS = torch.tensor([0, 1])


def _softmax_at(row, y):
    e = [math.exp(x) for x in row]
    return e[y] / sum(e)


def test_scores_and_coefficients_equal_the_formula():
    s_a = _softmax_at([4, 0, 0], 0) + _softmax_at([0, 3, 0], 1)
    s_v = _softmax_at([0.5, 0, 0], 0) + _softmax_at([0, 0, 1], 1)
    scores = modality_scores(OUT_A, OUT_V, LABELS)
    assert scores.tolist() == pytest.approx([s_a, s_v], rel=1e-12)
    rho = s_a / s_v
    assert rho > 1
    for alpha in (0.1, 0.5, 1.0):
        k_a, k_v, rho_a = ogm_coefficients(s_a, s_v, alpha)
        assert (k_a, k_v, rho_a) == pytest.approx((1 - math.tanh(alpha * rho), 1.0, rho))
        k_a, k_v, _ = ogm_coefficients(s_a, s_v, alpha, form="paper")
        assert (k_a, k_v) == pytest.approx((1 - math.tanh(alpha * (rho - 1)), 1.0))
    # visual dominant: the visual coefficient shrinks
    k_a, k_v, _ = ogm_coefficients(s_v, s_a, 0.5)
    assert (k_a, k_v) == pytest.approx((1.0, 1 - math.tanh(0.5 * rho)))
    assert ogm_coefficients(2.0, 2.0, 0.5)[:2] == (1.0, 1.0)


def _model_with_grads(seed=0, fusion="concat"):
    torch.manual_seed(seed)
    model = two_encoder_tiny(classes=3, fusion=fusion)
    out = model(torch.randn(4, 1, 32, 32), torch.randn(4, 3, 32, 32))
    nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 0])).backward()
    return model, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_only_the_dominant_encoders_conv_gradients_are_scaled():
    model, before = _model_with_grads()
    hook = OGMGE(OGMGEConfig(alpha=0.5, ge=False))
    logs = hook.after_backward(_trainer(model), [{"out_a": OUT_A, "out_v": OUT_V, "labels": LABELS}])
    s = modality_scores(OUT_A, OUT_V, LABELS)
    k_a = 1 - math.tanh(0.5 * float(s[0] / s[1]))
    assert logs["ogm/k_a"] == pytest.approx(k_a) and logs["ogm/k_v"] == 1.0 and logs["ogm/active"] == 1.0
    scaled = 0
    for n, p in model.named_parameters():
        if n.startswith("audio_net.") and p.dim() == 4:
            torch.testing.assert_close(p.grad, before[n] * k_a)
            scaled += 1
        else:  # BN, fusion head, visual encoder (k_v = 1): untouched
            torch.testing.assert_close(p.grad, before[n], rtol=0, atol=0)
    assert scaled == 20  # ResNet-18: stem + 16 block convs + 3 downsample convs


def test_ge_noise_has_the_unscaled_gradients_std():
    model = nn.ModuleDict({"audio_net": nn.Conv2d(64, 64, 3), "visual_net": nn.Conv2d(64, 64, 3)})
    g = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(p.shape, generator=g) * (0.3 if "audio" in n else 2.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    hook = OGMGE(OGMGEConfig(alpha=1.0, ge=True, conv_only=False), generator=torch.Generator().manual_seed(1))
    logs = hook.after_backward(_trainer(model), [{"out_a": OUT_A, "out_v": OUT_V, "labels": LABELS}])
    k = {"audio": logs["ogm/k_a"], "visual": logs["ogm/k_v"]}
    for n, p in model.named_parameters():
        if p.dim() != 4:
            continue
        modality = n.split("_")[0]
        noise = p.grad - k[modality] * grads[n]
        assert noise.mean().abs() < 0.02 * grads[n].std()
        assert float(noise.std()) == pytest.approx(float(grads[n].std()), rel=0.03)


def test_epoch_range_is_inclusive_and_accumulation_sums_scores():
    model, before = _model_with_grads()
    cfg = OGMGEConfig(alpha=0.5, ge=False, start_epoch=2, end_epoch=3)
    aux = [{"out_a": OUT_A[:1], "out_v": OUT_V[:1], "labels": LABELS[:1]},
           {"out_a": OUT_A[1:], "out_v": OUT_V[1:], "labels": LABELS[1:]}]
    one = OGMGE(cfg).after_backward(_trainer(model, epoch=1), aux)
    assert one["ogm/active"] == 0.0
    name = "audio_net.stem.0.weight"
    torch.testing.assert_close(dict(model.named_parameters())[name].grad, before[name], rtol=0, atol=0)
    whole = OGMGE(cfg).after_backward(_trainer(model, epoch=3), [{"out_a": OUT_A, "out_v": OUT_V, "labels": LABELS}])
    assert whole["ogm/active"] == 1.0
    assert one["ogm/k_a"] == pytest.approx(whole["ogm/k_a"]) and one["ogm/rho_a"] == pytest.approx(whole["ogm/rho_a"])
    assert OGMGE(cfg).after_backward(_trainer(model, epoch=4), aux)["ogm/active"] == 0.0


def test_errors_name_the_problem():
    model, _ = _model_with_grads()
    with pytest.raises(KeyError, match="lacks"):
        OGMGE().after_backward(_trainer(model), [{"out_a": OUT_A, "labels": LABELS}])
    with pytest.raises(ValueError, match="no parameter"):
        OGMGE(OGMGEConfig(audio_prefix="sound.")).after_backward(_trainer(model), [{"out_a": OUT_A, "out_v": OUT_V,
                                                                                     "labels": LABELS}])
    with pytest.raises(ValueError, match="form"):
        OGMGEConfig(form="sigmoid")
    with pytest.raises(ValueError, match="start_epoch"):
        OGMGEConfig(start_epoch=5, end_epoch=2)


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_fusion_contributions_sum_to_the_logits(kind):
    torch.manual_seed(0)
    head = build_fusion(kind, 16, 24, 5, hidden=32)
    a, v = torch.randn(3, 16), torch.randn(3, 24)
    out = head(a, v)
    assert out.logits.shape == out.out_a.shape == out.out_v.shape == (3, 5)
    torch.testing.assert_close(out.out_a + out.out_v, out.logits)


def test_concat_and_sum_contributions_are_the_public_codes():
    torch.manual_seed(0)
    head = build_fusion("concat", 4, 6, 3)
    a, v = torch.randn(2, 4), torch.randn(2, 6)
    w, b = head.fc.weight, head.fc.bias
    out = head(a, v)
    torch.testing.assert_close(out.out_a, a @ w[:, :4].T + b / 2)
    torch.testing.assert_close(out.out_v, v @ w[:, 4:].T + b / 2)
    head = build_fusion("sum", 4, 6, 3)
    out = head(a, v)
    torch.testing.assert_close(out.out_a, head.fc_a(a))
    torch.testing.assert_close(out.out_v, head.fc_v(v))
