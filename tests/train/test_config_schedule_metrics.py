"""Config files and overrides, the warm-up + half-cosine schedule, retrieval metrics."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from avfast.metrics.retrieval import median_rank, ranks_from_similarity, recall_at_k, retrieval_summary
from avfast.train.config import ConfigError, load_config
from avfast.train.schedule import warmup_cosine
from avfast.train.evaluate import linear_probe, retrieval_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_papers_settings():
    cfg = load_config()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_epochs, cfg.loss.tau) == (3e-4, 5e-2, 2.0, 0.07)
    assert (cfg.model.video, cfg.model.audio, cfg.model.embed_dim) == ("x3d_m", "acoustic_resnet50", 512)
    assert cfg.data.same_source_fraction == 0.125 and cfg.data.num_frames == 16 and cfg.data.crop_size == 224


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name


def test_overrides_files_toml_and_inheritance(tmp_path):
    (tmp_path / "base.toml").write_text('name = "b"\n[optim]\nlr = 0.01\nepochs = 3\n')
    (tmp_path / "top.yaml").write_text("base: base.toml\noptim:\n  epochs: 5\n")
    cfg = load_config(tmp_path / "top.yaml", ["optim.warmup_epochs=1", "data.short_side=[64, 72]", "optim.lr=1e-3"])
    assert (cfg.name, cfg.optim.lr, cfg.optim.epochs, cfg.optim.warmup_epochs) == ("b", 1e-3, 5.0, 1.0)
    assert cfg.data.short_side == (64, 72)


@pytest.mark.parametrize("override,match", [("optim.lrr=1", "optim.lrr"), ("optim.lr=abc", "optim.lr"),
                                            ("data.variant=trilingual", "data.variant"),
                                            ("train.precision=fp8", "train.precision"), ("optim", "form"),
                                            ("model.video=null", "audio_only")])
def test_bad_config_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_warmup_then_half_cosine():
    lr = [warmup_cosine(s, 100, 20) for s in range(101)]
    assert lr[0] == pytest.approx(1 / 20) and lr[19] == pytest.approx(1.0)
    assert lr[20] == pytest.approx(1.0) and lr[60] == pytest.approx(0.5) and lr[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lr[20:], lr[21:]))
    assert warmup_cosine(60, 100, 20, min_ratio=0.1) == pytest.approx(0.55)


def test_recall_and_median_rank_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.7, 0.2]])
    assert ranks_from_similarity(sim).tolist() == [1, 2, 3]
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3) and recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert median_rank(sim) == 2.0
    s = retrieval_summary(torch.tensor([1, 2, 3, 10]), ks=(1, 5), gallery_size=10)
    assert s["R@1"] == 25.0 and s["R@5"] == 75.0 and s["chance_R@5"] == 50.0


def test_sharded_retrieval_matches_the_full_matrix_one_process():
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(37, 8, generator=g), dim=-1)
    a = torch.nn.functional.normalize(v + 0.7 * torch.randn(37, 8, generator=g), dim=-1)
    perm = torch.randperm(37, generator=g)  # clip ids need not be in order
    out = retrieval_metrics({"v": v[perm], "a": a[perm], "clip": perm}, ks=(1, 5, 10), chunk_size=8)
    sim = v @ a.T
    for name, s in (("video->audio", sim), ("audio->video", sim.T)):
        for k in (1, 5, 10):
            assert out[name][f"R@{k}"] == pytest.approx(100 * recall_at_k(s, k))
        assert out[name]["median_rank"] == median_rank(s)


def test_linear_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=g) * 0.3 + torch.nn.functional.one_hot(y, 5).float() * 2
    r = linear_probe(x[:45], y[:45], x[45:], y[45:], epochs=50)
    assert r["test_acc"] == 100.0 and r["classes"] == 3
