"""One seed-001 training step (demo model, batch 16): avfast ops vs the torch reference ops.

The step is what a GPU-side pipeline runs per batch: dB-mel with per-sample SpecAugment masks of the
primary and secondary waves (``ops.mel_spectrogram``, 1 s of 48 kHz pseudo-stereo), the video and
audio towers forward and backward, the dub contrastive loss (``nn.DubContrastiveLoss``), AdamW.
Both providers run the same model and data in float32 on CPU; only the ops' backend differs
(``backend="auto"`` vs ``backend="torch"``). Peak memory: ``peak_rss_subprocess`` of 3 steps.

``train.mel_on_device`` is this arrangement (the mel inside the step, on the training device); the
``worker_mel`` provider runs the same step fed with mel computed beforehand (the worker path), so the
difference of the two is the mel op's share of the step.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _harness import peak_rss_subprocess, run, size

BATCH = size(16, 4)
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
SETUP = f"""
import torch
from avfast.ops import mel_spectrogram, MelConfig
from avfast.train.config import load_config
from avfast.train.data import TensorSource
from avfast.train.factory import build_model, build_objective
from avfast.train.trainer import Trainer

def make_step(backend, batch={BATCH}, worker_mel=False):
    cfg = load_config({CONFIG!r}, [f"loss.backend={{backend}}", "train.progress=false"])
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    objective = build_objective(cfg)
    mel = MelConfig.preset("dub", masks=True)
    gen = torch.Generator().manual_seed(0)

    def step_objective(model, b):
        b = dict(b)
        for key in ("audio", "audio_s"):
            b[key] = mel_spectrogram(b.pop("wave" + key[5:]), mel, generator=gen, backend=backend)
        return objective(model, b)

    g = torch.Generator().manual_seed(0)
    data = {{"video": torch.randn(batch, 3, 8, 64, 64, generator=g),
            "video_s": torch.randn(batch, 3, 8, 64, 64, generator=g),
            "wave": 0.1 * torch.randn(batch, 2, 48000, generator=g),
            "wave_s": 0.1 * torch.randn(batch, 2, 48000, generator=g),
            "source": torch.arange(batch) // 4}}
    if worker_mel:  # the mel computed before the step, as the data workers do
        for key in ("audio", "audio_s"):
            data[key] = mel_spectrogram(data.pop("wave" + key[5:]), mel, generator=gen, backend=backend)
    trainer = Trainer(cfg, build_model(cfg), objective if worker_mel else step_objective, TensorSource(data, batch),
                      log=lambda *_: None)
    fixed = next(trainer.data.batches(0, 0))
    return lambda: trainer.train_step([fixed])
"""

namespace: dict = {}
exec(compile(SETUP, "<bench_step setup>", "exec"), namespace)


@pytest.mark.parametrize("provider", ["avfast", "torch", "worker_mel"])
def test_train_step(benchmark, provider):
    torch.manual_seed(0)
    backend, worker = ("torch", False) if provider == "torch" else ("auto", provider == "worker_mel")
    step = namespace["make_step"](backend, worker_mel=worker)
    step()  # warm-up: first-call dispatch, allocator
    memory = peak_rss_subprocess(SETUP + f"\nstep = make_step({backend!r}, worker_mel={worker})\n"
                                 "for _ in range(3):\n    step()\n")
    run(benchmark, step, group=f"train_step demo model batch {BATCH} (fp32 CPU)", provider=provider,
        baseline=provider == "torch", items=BATCH, unit="clips", rounds=size(5, 1), peak_bytes=memory["peak_bytes"])
