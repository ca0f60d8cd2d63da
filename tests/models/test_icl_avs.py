"""ICL-AVS (seed 002) and its MiT backbone: shapes per task, weights, every loss term against its formula."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avfast.models.icl_avs import (ICLAVSConfig, ICLAVSLoss, ICLAVSLossConfig, dice_loss, focal_loss,
                                   icl_avs_baseline, icl_avs_tiny, kl_standard_normal, masked_average_pool,
                                   orthogonality_loss, time_window)
from avfast.models.mit import MiTConfig, mit_b0, mit_b1, mit_b2, mit_tiny

# MiT ------------------------------------------------------------------------------------------------


def test_mit_b0_stage_shapes_and_paper_sizes():
    model = mit_b0().eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 56, 56), (1, 64, 28, 28), (1, 160, 14, 14), (1, 256, 7, 7)]
    # SegFormer paper (encoder parameters, millions, rounded): B1 13.1, B2 24.2
    for build, millions in ((mit_b1, 13.1), (mit_b2, 24.2)):
        assert sum(p.numel() for p in build().parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


def test_mit_config_refuses_inconsistent_sizes():
    with pytest.raises(ValueError, match="one length"):
        MiTConfig(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="not divisible"):
        MiTConfig(num_heads=(1, 3, 5, 8))


def test_mit_weights_from_a_local_file_strict(tmp_path):
    source = mit_tiny()
    path = tmp_path / "mit.pt"
    torch.save(source.state_dict(), path)
    loaded = mit_tiny(weights=path)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["norms.0.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['norms.0.weight'\].*unexpected keys \['extra.weight'\]"):
        mit_tiny(weights=path)
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        mit_tiny(weights=tmp_path / "absent.pt")


# Model shapes per task ------------------------------------------------------------------------------


@pytest.mark.parametrize("task,frames,classes", [("s4", 5, 1), ("ms3", 5, 1), ("avss", 10, 71)])
def test_shapes_through_the_model_for_each_task(task, frames, classes):
    model = icl_avs_tiny(task=task).eval()
    x, a = torch.randn(1, frames, 3, 224, 224), torch.randn(1, frames, 128)
    with torch.no_grad():
        out = model(x, a)
    logits_shape = (1, frames, 224, 224) if classes == 1 else (1, frames, classes, 224, 224)
    assert out["logits"].shape == out["logits_cf"].shape == logits_shape
    assert out["pixels"].shape == out["pixels_cf"].shape == (frames, 32, 56, 56)
    for key in ("audio", "audio_cf", "text", "text_cf"):
        assert out[key].shape == (frames, 32)
    for key in ("z", "z_cf", "mu", "logvar"):
        assert out[key].shape == (frames, 16)


def test_baseline_has_no_text_or_counterfactual_and_features_from_files_work():
    model = icl_avs_baseline(task="s4", backbone="mit_tiny", dim=32, heads=2).eval()
    x, a = torch.randn(2, 5, 3, 64, 64), torch.randn(2, 5, 128)
    with torch.no_grad():
        out = model(x, a)
        maps = model.backbone(x.flatten(0, 1))
        again = model(audio=a, visual_maps=maps, image_size=(64, 64))
    assert set(out) == {"logits", "pixels", "audio"}
    torch.testing.assert_close(out["logits"], again["logits"])


def test_mel_audio_from_waves():
    model = icl_avs_tiny(task="ms3", audio="mel").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 5, 3, 64, 64), torch.randn(1, 5, 16000) * 0.1)
    assert out["logits"].shape == (1, 5, 64, 64)


def test_torch_backend_gives_the_same_outputs():
    torch.manual_seed(0)
    fused = icl_avs_tiny(task="s4").eval()
    plain = icl_avs_tiny(task="s4", backend="torch").eval()
    plain.load_state_dict(fused.state_dict())
    x, a = torch.randn(1, 5, 3, 64, 64), torch.randn(1, 5, 128)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, a)["logits"], plain(x, a)["logits"], atol=1e-4, rtol=1e-4)


def test_config_errors_and_time_windows():
    with pytest.raises(ValueError, match="task"):
        ICLAVSConfig(task="vggss")
    with pytest.raises(ValueError, match="divisible"):
        ICLAVSConfig(dim=100, heads=8)
    with pytest.raises(ValueError, match="needs implicit_text"):
        ICLAVSConfig(implicit_text=False)
    with pytest.raises(ValueError, match="binary"):
        ICLAVSConfig(task="s4", num_classes=71)
    with pytest.raises(ValueError, match="contrast"):
        ICLAVSLossConfig(contrast="pixel")
    # the seed: ceil(T/2) for S4 and MS3 (T = 5 -> 3), ceil(T/4) for AVSS (T = 10 -> 3)
    assert ICLAVSConfig(task="s4").divisor == ICLAVSConfig(task="ms3").divisor == 2
    assert ICLAVSConfig(task="avss").divisor == 4
    assert time_window(5, 2) == 3 and time_window(10, 4) == 3 and time_window(1, 4) == 1


def test_audio_feature_size_is_checked():
    model = icl_avs_tiny(task="s4")
    with pytest.raises(ValueError, match=r"audio features must be \(B, T, 128\)"):
        model(torch.randn(1, 5, 3, 64, 64), torch.randn(1, 5, 64))


# Loss terms against their formulas --------------------------------------------------------------


def test_dice_binary_and_semantic():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    p = logits.sigmoid()
    expected = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    torch.testing.assert_close(dice_loss(logits, target), expected)
    scores = torch.randn(2, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    probs, onehot = scores.softmax(1), F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    per = [1 - (2 * (probs[n, c] * onehot[n, c]).sum() + 1) / (probs[n, c].sum() + onehot[n, c].sum() + 1)
           for n in range(2) for c in range(3)]
    torch.testing.assert_close(dice_loss(scores, labels), torch.stack(per).mean())


def test_focal_binary_and_semantic():
    logits = torch.tensor([1.5, -0.5, 0.2, -2.0])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = logits.sigmoid()
    p_t = torch.where(target == 1, p, 1 - p)
    a_t = torch.where(target == 1, torch.tensor(0.25), torch.tensor(0.75))
    expected = (-a_t * (1 - p_t) ** 2 * p_t.log()).mean()
    torch.testing.assert_close(focal_loss(logits, target), expected)
    scores = torch.randn(3, 4, 1, 1)
    labels = torch.tensor([[[0]], [[3]], [[2]]])
    py = scores.softmax(1)[torch.arange(3), labels.view(-1)].view(-1)
    torch.testing.assert_close(focal_loss(scores, labels), (-(1 - py) ** 2 * py.log()).mean())


def test_kl_and_orthogonality():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert orthogonality_loss(z, torch.tensor([[0.0, 2.0], [1.0, -1.0]])).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonality_loss(z, -3 * z).item() == pytest.approx(1.0)
    assert orthogonality_loss(z[:1], torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.5)


def test_masked_average_pool_by_hand():
    feats = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    pooled = masked_average_pool(feats, mask)
    assert pooled[:, 0].tolist() == [(0 + 3) / 2, (4 + 5 + 6 + 7) / 4]   # empty mask -> plain mean
    big = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)           # resized to the feature size
    torch.testing.assert_close(masked_average_pool(feats, big), pooled)


def _direct_nce(x, y, ids, tau):
    """Symmetric InfoNCE, rows with the same id (other than the diagonal) left out of the denominator."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    logits = x @ y.T / tau
    removed = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool)
    logits = logits.masked_fill(removed, -math.inf)
    row = -logits.log_softmax(1).diagonal()
    col = -logits.T.log_softmax(1).diagonal()
    return ((row + col) / 2).mean()


def _fake_outputs(b=2, t=3, d=4, h=4, g=None):
    g = g or torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    out = {"logits": r(b, t, 8, 8), "logits_cf": r(b, t, 8, 8), "z": r(b * t, 5), "z_cf": r(b * t, 5),
           "mu": r(b * t, 5), "logvar": r(b * t, 5)}
    for suffix in ("", "_cf"):
        out["pixels" + suffix] = r(b * t, d, h, h)
        out["audio" + suffix], out["text" + suffix] = r(b * t, d), r(b * t, d)
    masks = (torch.rand(b, t, 8, 8, generator=g) > 0.6).float()
    return out, masks


def test_every_term_and_the_weighted_total():
    out, masks = _fake_outputs()
    cfg = ICLAVSLossConfig()
    total, terms = ICLAVSLoss(cfg)(out, masks)
    logits, target = out["logits"].flatten(0, 1), masks.flatten(0, 1)
    torch.testing.assert_close(terms["bce"], F.binary_cross_entropy_with_logits(logits, target))
    torch.testing.assert_close(terms["dice"], dice_loss(logits, target))
    torch.testing.assert_close(terms["focal"], focal_loss(logits, target))
    effect = logits - out["logits_cf"].flatten(0, 1)
    torch.testing.assert_close(terms["cf"], F.binary_cross_entropy_with_logits(effect, target))
    torch.testing.assert_close(terms["ortho"], orthogonality_loss(out["z"], out["z_cf"]))
    torch.testing.assert_close(terms["z"], kl_standard_normal(out["mu"], out["logvar"]))
    # frame contrast: factual rows then counterfactual rows; frames of one clip share an id
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    v = torch.cat([out["pixels"].mean((-2, -1)), out["pixels_cf"].mean((-2, -1))])
    a = torch.cat([out["audio"], out["audio_cf"]])
    l = torch.cat([out["text"], out["text_cf"]])
    for key, (x, y) in {"va": (v, a), "al": (a, l), "vl": (v, l)}.items():
        torch.testing.assert_close(terms[key], _direct_nce(x, y, ids, 0.07), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["cdcl"], 0.4 * terms["va"] + 0.3 * terms["al"] + 0.3 * terms["vl"])
    expected = (terms["bce"] + terms["dice"] + terms["focal"] + 0.2 * terms["cf"] + 1.0 * terms["ortho"]
                + 0.8 * terms["z"] + 0.2 * terms["cdcl"])
    torch.testing.assert_close(total, expected)


def test_prototype_contrast_uses_masked_pooling_and_mean_audio():
    out, masks = _fake_outputs(b=3, t=2, h=8)
    _, terms = ICLAVSLoss(ICLAVSLossConfig(contrast="prototype"))(out, masks)
    protos = {}
    for suffix in ("", "_cf"):
        pix = out["pixels" + suffix].view(3, 2, 4, 8, 8)
        v = torch.stack([(pix[i] * masks[i][:, None]).sum((0, 2, 3)) / masks[i].sum() for i in range(3)])
        protos[suffix] = (v, out["audio" + suffix].view(3, 2, 4).mean(1), out["text" + suffix].view(3, 2, 4).mean(1))
    v, a, l = (torch.cat([protos[""][i], protos["_cf"][i]]) for i in range(3))
    ids = torch.arange(6)
    torch.testing.assert_close(terms["va"], _direct_nce(v, a, ids, 0.07), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["vl"], _direct_nce(v, l, ids, 0.07), atol=1e-5, rtol=1e-5)


def test_terms_switch_off_and_valid_frames_select():
    out, masks = _fake_outputs()
    off = ICLAVSLossConfig(cf=0.0, cdcl=0.0, ortho=0.0, z=0.0, dice=0.0, focal=0.0)
    total, terms = ICLAVSLoss(off)(out, masks)
    assert set(terms) == {"bce", "dice", "focal"}
    torch.testing.assert_close(total, terms["bce"])
    valid = torch.tensor([[True, False, False], [True, False, False]])   # S4 train: first frame only
    _, terms = ICLAVSLoss(off)(out, masks, valid)
    expected = F.binary_cross_entropy_with_logits(out["logits"][:, 0], masks[:, 0])
    torch.testing.assert_close(terms["bce"], expected)


def test_semantic_terms_use_cross_entropy():
    g = torch.Generator().manual_seed(1)
    out = {"logits": torch.randn(1, 2, 5, 4, 4, generator=g), "logits_cf": torch.randn(1, 2, 5, 4, 4, generator=g)}
    labels = torch.randint(0, 5, (1, 2, 4, 4), generator=g)
    _, terms = ICLAVSLoss(ICLAVSLossConfig(cdcl=0.0, ortho=0.0, z=0.0))(out, labels)
    torch.testing.assert_close(terms["bce"], F.cross_entropy(out["logits"].flatten(0, 1), labels.flatten(0, 1)))
    effect = (out["logits"] - out["logits_cf"]).flatten(0, 1)
    torch.testing.assert_close(terms["cf"], F.cross_entropy(effect, labels.flatten(0, 1)))


def test_full_model_loss_backpropagates_to_every_used_parameter():
    model = icl_avs_tiny(task="s4")
    out = model(torch.randn(2, 5, 3, 64, 64), torch.randn(2, 5, 128))
    masks = (torch.rand(2, 5, 64, 64) > 0.5).float()
    total, _ = ICLAVSLoss()(out, masks)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


# Training on synthetic clips ------------------------------------------------------------------------


def _train_and_eval(model, data, test, steps=300, seed=0):
    """A plain loop (AdamW 2e-3, batch 4 clips): -> (segmentation-loss history, test J)."""
    from avfast.metrics import mask_iou

    torch.manual_seed(seed)
    loss_fn = ICLAVSLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, data["frames"].shape[0], (4,), generator=g)
        loss, terms = loss_fn(model(data["frames"][idx], data["audio"][idx]), data["masks"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float((terms["bce"] + terms["dice"] + terms["focal"]).detach()))
    model.eval()
    with torch.no_grad():
        prob = torch.cat([model(test["frames"][i:i + 8], test["audio"][i:i + 8])["logits"].sigmoid()
                          for i in range(0, test["frames"].shape[0], 8)])
    return history, mask_iou(prob, test["masks"]).item()


def test_training_lowers_the_loss_and_the_full_model_beats_the_baseline():
    """S4-style synthetic clips: two shapes on screen, one sounding. A model that ignores the audio can
    at best segment both shapes (J of ``objects``); the full model (implicit text, counterfactual
    branch, CDCL) must beat that and the seed's baseline trained the same way (about 35 s of CPU)."""
    from avfast.data.avsbench import SyntheticAVS
    from avfast.metrics import mask_iou

    gen = SyntheticAVS("s4", size=64, seed=0)
    data, test = gen.tensors(48, seed=1), gen.tensors(24, seed=2)
    torch.manual_seed(0)
    baseline = icl_avs_baseline(task="s4", backbone="mit_tiny", dim=32, heads=2)
    torch.manual_seed(0)
    full = icl_avs_tiny(task="s4")
    _, j_baseline = _train_and_eval(baseline, data, test)
    history, j_full = _train_and_eval(full, data, test)
    assert sum(history[-20:]) / 20 < 0.5 * sum(history[:10]) / 10
    j_visual_only = mask_iou(test["objects"], test["masks"]).item()
    assert j_full > j_visual_only + 0.05, (j_full, j_visual_only)
    assert j_full > j_baseline + 0.03, (j_full, j_baseline)


# The command ------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_avs_command_trains_resumes_and_evaluates_on_the_avsbench_layout(tmp_path, capsys):
    """``avfast avs train|eval --task avss`` on the shipped AVSBench fixture: mIoU / F / FDR printed,
    PNGs of predictions beside the ground truth, resume from the latest checkpoint."""
    import json

    from avfast.cli import main

    out = tmp_path / "run"
    common = ["--config", str(REPO / "configs/avs/demo_synthetic.yaml"), "--set",
              f"data.root={REPO / 'tests/fixtures/avsbench'}", "--set", "data.batch_size=1", "--set", "data.size=64"]
    assert main(["avs", "train", "--task", "avss", "--out", str(out), *common, "--set", "optim.epochs=1",
                 "--evaluate", "val"]) == 0
    printed = capsys.readouterr().out
    for key in ("mIoU", "F", "FDR"):
        assert f"\n  {key} " in printed
    png = out / "masks" / "val" / "v2_val_000_0.png"
    from avfast.data.avsbench import read_image

    assert read_image(png).shape == (64, 3 * 64, 3)          # frame | ground truth | prediction
    assert main(["avs", "train", "--task", "avss", "--out", str(out), *common, "--set", "optim.epochs=2",
                 "--resume", "--evaluate"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["avs", "eval", "--task", "avss", "--checkpoint", str(out), "--split", "val", "--masks",
                 str(tmp_path / "m"), "--json", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results) >= {"mIoU", "F", "FDR", "J"} and results["frames"] == 10
    assert len(list((tmp_path / "m" / "val").glob("*.png"))) == 10


def test_avs_command_binary_task_prints_j_and_f_with_snr(tmp_path, capsys):
    from avfast.cli import main

    out = tmp_path / "run"
    assert main(["avs", "train", "--task", "ms3", "--config", str(REPO / "configs/avs/demo_synthetic.yaml"),
                 "--out", str(out), "--set", "optim.epochs=1", "--set", "data.synthetic_clips=8",
                 "--set", "data.snr_db=[0]"]) == 0
    printed = capsys.readouterr().out
    assert "\n  J " in printed and "\n  F " in printed and "snr_0dB:" in printed
    from avfast.train.config import ConfigError

    with pytest.raises(ConfigError, match="data.task"):
        main(["avs", "train", "--config", str(REPO / "configs/avs/demo_synthetic.yaml"), "--out", str(out),
              "--set", "data.task=ms3"])


def test_configs_carry_the_seed_settings():
    from avfast.train.config import load_config

    def load(name):
        return load_config(REPO / "configs" / "avs" / f"{name}.yaml")

    s4, ms3, avss, kt30 = load("s4"), load("ms3"), load("avss"), load("s4_kt30")
    assert (s4.model.k_text, kt30.model.k_text) == (15, 30)
    assert (s4.model.divisor, ms3.model.divisor, avss.model.divisor) == (2, 2, 4)
    assert avss.model.classes == 71 and s4.model.backbone == "mit_b2"
    weights = {k: getattr(s4.loss, k) for k in ("bce", "dice", "focal", "cf", "cdcl", "ortho", "z", "va", "al", "vl")}
    assert weights == {"bce": 1.0, "dice": 1.0, "focal": 1.0, "cf": 0.2, "cdcl": 0.2, "ortho": 1.0, "z": 0.8,
                       "va": 0.4, "al": 0.3, "vl": 0.3}
    assert weights == {k: getattr(ICLAVSLossConfig(), k) for k in weights}
    baseline = load("s4_baseline")
    assert not baseline.model.implicit_text and not baseline.model.counterfactual
    assert load("s4_prototype_contrast").loss.contrast == "prototype"
    assert load("ms3_frame_mix").data.frame_mix == 0.25 and ms3.data.snr_db == [-5, 0, 5, 10]
