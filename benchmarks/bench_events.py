"""Seed 004 (event fusion layers): one training step, avfast ops vs ``backend="torch"``; onset
detection on clips of 10 s, ``avfast.audio.onset`` (batched tensors) vs librosa (one clip at a time).

Step: the event fusion net at reduced size (full: batch 4, 10 s, 100 x 112^2 frames, width 1/4;
quick: batch 8, 3 s, 30 x 32^2, width 1/16), multi-task BCE, Adam, precomputed onsets. Both providers
run the same weights and data in float32; only the ops' backend differs (``mel_spectrogram`` of the
audio branch, ``cross_attention`` of the instant layer). ``ops_forward_ms``: time inside those op
calls during the forward (timed wrappers, synchronised), with its share of the step.

Onsets: 1,000 clips of 10 s at 16 kHz (quick: 40), envelope + peak picking, sr 16000, hop 160;
avfast in batches of 100 clips on the default device, librosa ``onset_detect`` per clip.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from _harness import run, size, time_ops, train_step

STEP = size(dict(batch=4, segments=10, frames=100, frame_size=112, width=0.25, hidden=128),
            dict(batch=8, segments=3, frames=30, frame_size=32, width=0.0625, hidden=64))
ONSET_CLIPS = size(1000, 40)
ONSET_CHUNK = 100


OPS = (("avfast.ops", "mel_spectrogram"), ("avfast.ops", "cross_attention"))  # looked up in avfast.ops at call time


def _make_step(backend: str):
    from avfast.models.event_fusion import EventFusionConfig, EventFusionLoss, EventFusionNet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = STEP["batch"]
    kw = {k: v for k, v in STEP.items() if k != "batch"}
    torch.manual_seed(0)
    model = EventFusionNet(EventFusionConfig(classes=309, backend=backend, **kw)).to(device)
    loss = EventFusionLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    wave = (0.1 * torch.randn(b, kw["segments"] * 16000, generator=g)).to(device)
    frames = torch.randn(b, 3, kw["frames"], kw["frame_size"], kw["frame_size"], generator=g).to(device)
    onsets = (torch.rand(b, kw["segments"] * 10, generator=g) > 0.8).to(device)
    labels = (torch.rand(b, 309, generator=g) > 0.99).float().to(device)
    return train_step(lambda: loss(model(wave, frames, onsets=onsets), labels)[0], opt)


@pytest.mark.parametrize("provider", ["avfast", "torch"])
def test_train_step_events(benchmark, provider):
    step = _make_step("auto" if provider == "avfast" else "torch")
    step()  # warm-up
    step_s, ops_s = time_ops(step, OPS)
    s = STEP
    run(benchmark, step, group=f"event fusion train step b{s['batch']} {s['segments']} s {s['frames']}x{s['frame_size']}px "
        f"width {s['width']} (fp32)", provider=provider, baseline=provider == "torch", items=s["batch"], unit="clips",
        rounds=size(3, 1), ops_forward_ms=1000 * ops_s, ops_forward_share=ops_s / step_s)


def _clips(n: int) -> np.ndarray:
    """n clips of 10 s: noise plus clicks at random times (float32)."""
    rng = np.random.default_rng(0)
    y = (0.01 * rng.standard_normal((n, 160000))).astype(np.float32)
    for i in range(n):
        for t in rng.integers(0, 160000 - 64, 20):
            y[i, t:t + 64] += 0.5 * np.hanning(64).astype(np.float32)
    return y


@pytest.mark.parametrize("provider", ["avfast", "librosa"])
def test_onset_detect(benchmark, provider):
    y = _clips(ONSET_CLIPS)
    if provider == "avfast":
        from avfast.audio.onset import onset_detect

        device = "cuda" if torch.cuda.is_available() else "cpu"
        waves = torch.from_numpy(y).to(device)

        def fn():
            out = [onset_detect(waves[i:i + ONSET_CHUNK]) for i in range(0, len(waves), ONSET_CHUNK)]
            if device == "cuda":
                torch.cuda.synchronize()
            return out
    else:
        librosa = pytest.importorskip("librosa")
        librosa.onset.onset_detect(y=y[0], sr=16000, hop_length=160)  # numba compile outside the timing

        def fn():
            return [librosa.onset.onset_detect(y=c, sr=16000, hop_length=160) for c in y]

    run(benchmark, fn, group=f"onset detection, {ONSET_CLIPS} clips of 10 s (sr 16000, hop 160)", provider=provider,
        baseline=provider == "librosa", items=ONSET_CLIPS, unit="clips", rounds=size(2, 1))
