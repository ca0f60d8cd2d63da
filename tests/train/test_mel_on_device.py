"""train.mel_on_device: workers ship waves + the masks they drew; one mel call per audio entry on the
training device equals the worker path (atol 1e-3 dB), and the rest of the example's randomness is unchanged."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from avfast.data import DataConfig, QuadrupleDataset, build_loader
from avfast.train.objective import device_mel

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
SMALL = ["data.batch_size=4", "data.num_workers=0", "data.num_frames=2", "data.crop_size=32",
         "data.short_side=[36, 40]", "data.options={}", "train.progress=false"]  # options {}: SpecAugment on


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from avfast.data import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), num_movies=2, shots_per_movie=3, width=64, height=48,
                          voice="synthetic")


def test_device_mel_equals_the_worker_path(manifest):
    cfg = DataConfig.demo(num_frames=2, crop=32, short_side=(36, 40))
    assert cfg.masks
    worker = QuadrupleDataset(manifest, "multilingual", cfg)
    waves = QuadrupleDataset(manifest, "multilingual", replace(cfg, audio="wave_masks"))
    kw = dict(batch_size=4, same_source_fraction=0.0, num_workers=0, seed=2)
    ref = next(iter(build_loader(worker, **kw)))
    got = next(iter(build_loader(waves, **kw)))
    assert got["audio"].shape[:2] == (4, 2) and got["audio"].dim() == 3  # (B, C, N) waves
    assert got["audio_time_masks"].shape == (4, 1, 2) and (got["audio_time_masks"][..., 1] > 0).any()
    mel = waves.mel_config()
    for key in ("audio", "audio_s"):
        y = device_mel(got[key], got[key + "_freq_masks"], got[key + "_time_masks"], mel)
        assert y.shape == ref[key].shape
        torch.testing.assert_close(y, ref[key], atol=1e-3, rtol=0)
        assert (y == 0).any()  # masked rows/frames hold the mask value
    for key in ("video", "video_s", "clip"):  # the draws after the masks are the same
        assert torch.equal(got[key], ref[key]), key


def test_training_batches_and_loss_match_with_mel_on_device(manifest):
    from avfast.train.config import load_config
    from avfast.train.data import ManifestSource
    from avfast.train.factory import build_model, build_objective

    losses = {}
    for flag in (False, True):
        cfg = load_config(CONFIG, SMALL + [f"train.mel_on_device={str(flag).lower()}"])
        assert cfg.train.mel_on_device is flag
        source = ManifestSource(cfg, str(manifest))
        batch = next(iter(source.batches(0, 0)))
        assert ("audio_freq_masks" in batch) == flag
        model, objective = build_model(cfg).eval(), build_objective(cfg)
        with torch.no_grad():
            losses[flag] = float(objective(model, batch)[0])
    assert losses[True] == pytest.approx(losses[False], abs=1e-3)
    assert load_config(CONFIG).train.mel_on_device is None  # auto: on when CUDA is available


def test_resumed_position_gives_the_same_wave_batch(manifest):
    from avfast.train.config import load_config
    from avfast.train.data import ManifestSource

    cfg = load_config(CONFIG, SMALL + ["train.mel_on_device=true", "data.batch_size=2"])
    full = list(ManifestSource(cfg, str(manifest)).batches(0, 0))
    resumed = next(iter(ManifestSource(cfg, str(manifest)).batches(0, 1)))
    for key in ("audio", "audio_freq_masks", "audio_time_masks", "audio_s", "video", "clip"):
        assert torch.equal(resumed[key], full[1][key]), key
