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


REPO = __import__("pathlib").Path(__file__).parent.parent.parent


def test_ogm_ge_narrows_the_modality_gap_on_audio_dominant_clips(tmp_path):
    """Audio is the easy modality: without modulation the visual encoder stays weak; OGM-GE slows
    the audio encoder's updates and the visual-only accuracy rises (the gap narrows)."""
    import json

    from avfast.train.config import load_config
    from avfast.train.run import train_family

    reports = {}
    for modulation in ("none", "ogm_ge"):
        cfg = load_config(REPO / "configs/ogm/demo_synthetic.yaml",
                          [f"loss.modulation={modulation}", "data.synthetic_size=16", "optim.epochs=10",
                           "loss.end_epoch=10", "data.synthetic_clips=768"], family="ogm")
        reports[modulation] = train_family(cfg, tmp_path / modulation, log=lambda *_: None)["test"]
    base, ogm = reports["none"], reports["ogm_ge"]
    assert base["acc_audio"] > 90 and ogm["acc"] > 90
    assert base["acc_audio"] - base["acc_visual"] > 30                       # the imbalance
    assert ogm["acc_visual"] > base["acc_visual"] + 10 and ogm["gap"] < base["gap"] - 10
    logged = [json.loads(line) for line in (tmp_path / "ogm_ge" / "metrics.jsonl").read_text().splitlines()]
    k_a = [r["ogm/k_a"] for r in logged if "ogm/k_a" in r]
    assert k_a and min(k_a) < 1.0 and all(r["ogm/k_v"] <= 1.0 for r in logged if "ogm/k_v" in r)


def test_ogm_command_on_a_labelled_manifest(tmp_path, capsys):
    import numpy as np

    from avfast.cli import main

    root = tmp_path / "clips"
    (root / "audio").mkdir(parents=True)
    (root / "visual").mkdir()
    rows = ["id,label,split"]
    rng = np.random.default_rng(0)
    for i in range(24):
        split = "train" if i < 16 else "test"
        rows.append(f"c{i},{['angry', 'happy', 'sad'][i % 3]},{split}")
        np.save(root / "audio" / f"c{i}.npy", rng.normal(size=(32, 32)).astype(np.float32))
        np.save(root / "visual" / f"c{i}.npy", rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    common = ["--config", str(REPO / "configs/ogm/demo_synthetic.yaml"), "--set", f"data.root={root}",
              "--set", "data.batch_size=8", "--set", "model.classes=3"]
    assert main(["ogm", "train", "--out", str(out), *common, "--set", "optim.epochs=1"]) == 0
    printed = capsys.readouterr().out
    for key in ("acc", "acc_audio", "acc_visual", "gap"):
        assert f"\n  {key} " in printed
    assert main(["ogm", "train", "--out", str(out), *common, "--set", "optim.epochs=2", "--resume", "--evaluate"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["ogm", "eval", "--checkpoint", str(out), "--split", "test"]) == 0
    (root / "visual" / "c17.npy").unlink()
    from avfast.data.errors import DataError

    with pytest.raises(DataError, match="c17.npy: visual file not found"):
        main(["ogm", "eval", "--checkpoint", str(out), "--split", "test"])


def _ddp_scores(rank: int, world_size: int):
    from avfast.train.ogm_ge import OGMGE

    trainer = SimpleNamespace(dist=SimpleNamespace(distributed=True))
    aux = [{"out_a": OUT_A[rank:rank + 1], "out_v": OUT_V[rank:rank + 1], "labels": LABELS[rank:rank + 1]}]
    scores, n = OGMGE().scores(aux, trainer)
    return scores.tolist(), n


def test_scores_are_all_reduced_over_ranks():
    """Under DDP each rank scores its half of the batch; the coefficients use the global sums."""
    from helpers import spawn

    (s0, n0), (s1, n1) = spawn(_ddp_scores, 2)
    assert s0 == s1 == pytest.approx(modality_scores(OUT_A, OUT_V, LABELS).tolist())
    assert n0 == n1 == 2


class _GradNorm:
    def __init__(self):
        self.norms = []

    def after_backward(self, trainer, aux):
        self.norms.append(float(trainer.model.audio_net.stem[0].weight.grad.norm()))


def test_hook_sees_unscaled_gradients_under_fp16_grad_scaling():
    """Under fp16 autocast the trainer's GradScaler multiplies the loss by 2**16; the hooks must see
    the true gradients (the same as fp32 up to fp16 rounding), or k would scale a scaled gradient."""
    from avfast.train.config import load_config
    from avfast.train.distributed import DistInfo
    from avfast.train.family import get_family
    from avfast.train.trainer import Trainer

    family, norms = get_family("ogm"), {}
    for precision in ("fp32", "fp16"):
        cfg = load_config(REPO / "configs/ogm/demo_synthetic.yaml",
                          [f"train.precision={precision}", "train.max_steps=12", "data.synthetic_size=16",
                           "data.synthetic_clips=64", "data.batch_size=64"], family="ogm")  # one batch, every step
        torch.manual_seed(0)
        model = family.build_model(cfg)
        info = DistInfo()
        recorder = _GradNorm()
        trainer = Trainer(cfg, model, family.build_objective(cfg, model), family.build_data(cfg, "train", info),
                          dist_info=info, hooks=[recorder, OGMGE(OGMGEConfig(ge=False))], log=lambda *_: None)
        assert trainer.scaler.is_enabled() == (precision == "fp16")
        trainer.train()
        # the scaler starts at 2**16: overflowing steps are skipped (weights unchanged) until it fits
        norms[precision] = next(n for n in recorder.norms if math.isfinite(n))
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=0.05)
