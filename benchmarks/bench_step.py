"""One seed-001 training step (demo model, batch 16): the two mel paths, and avfast ops vs torch ops.

Providers (same model, data, masks and float32 on CPU):

- ``mel_on_device``: ``train.mel_on_device`` as the trainer runs it: the batch holds 1 s of 48 kHz
  pseudo-stereo waves of the primary and secondary tracks plus the SpecAugment masks the workers drew
  (``avfast.data.dataset.device_mel_masks``); ``DubObjective`` computes the masked dB-mel with one
  ``ops.mel_spectrogram`` call per track inside the step, then the towers forward and backward, the
  dub contrastive loss (``nn.DubContrastiveLoss``), AdamW.
- ``worker_mel``: the worker path: the batch holds the masked mel the workers computed (per clip,
  ``ops.mel_spectrogram`` with the clip's generator); the step is the rest. The workers' mel time
  for one batch is reported as ``worker_mel_ms`` (it runs in the data workers, off the step).
- ``torch``: ``mel_on_device`` with every op on its ``torch`` backend (``AVFAST_BACKEND``): the baseline.

Each provider also reports the ops' share of its step (``ops_forward_ms``, ``ops_forward_share``:
``mel_spectrogram`` and ``contrastive_loss`` forward, timed by ``_harness.time_ops``). Peak memory:
``peak_rss_subprocess`` of 3 steps.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from _harness import peak_rss_subprocess, run, size, time_ops

BATCH = size(16, 4)
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
OPS = (("avfast.ops", "mel_spectrogram"), ("avfast.nn.contrastive", "contrastive_loss"))
TORCH_OPS = "mel_spectrogram=torch,contrastive_loss=torch"
SETUP = f"""
import time
import torch
from avfast import ops
from avfast.data.dataset import device_mel_masks
from avfast.train.config import load_config
from avfast.train.data import TensorSource
from avfast.train.factory import build_model, build_objective
from avfast.train.trainer import Trainer

def make_step(worker_mel=False, batch={BATCH}):
    cfg = load_config({CONFIG!r}, ["train.progress=false"])
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    objective = build_objective(cfg)
    mel = ops.MelConfig.preset("dub", masks=True)  # seed 001's SpecAugment masks on (the demo config has them off)
    g = torch.Generator().manual_seed(0)
    data = {{"video": torch.randn(batch, 3, 8, 64, 64, generator=g),
            "video_s": torch.randn(batch, 3, 8, 64, 64, generator=g),
            "source": torch.arange(batch) // 4}}
    worker_s = 0.0
    for key in ("audio", "audio_s"):
        waves = 0.1 * torch.randn(batch, 2, 48000, generator=g)
        gens = [torch.Generator().manual_seed(1000 * len(key) + i) for i in range(batch)]
        if worker_mel:  # each worker: the clip's masked mel from the clip's own generator
            start = time.perf_counter()
            data[key] = torch.cat([ops.mel_spectrogram(w[None], mel, generator=gen) for w, gen in zip(waves, gens)])
            worker_s += time.perf_counter() - start
        else:  # each worker draws the clip's masks; the step computes the mel (train.mel_on_device)
            masks = [device_mel_masks(waves.shape[-1], mel, gen) for gen in gens]
            data[key] = waves
            data[key + "_freq_masks"] = torch.stack([m[0] for m in masks])
            data[key + "_time_masks"] = torch.stack([m[1] for m in masks])
    objective.mel = mel
    trainer = Trainer(cfg, build_model(cfg), objective, TensorSource(data, batch, shuffle=False), log=lambda *_: None)
    fixed = next(trainer.data.batches(0, 0))
    step = lambda: trainer.train_step([fixed])
    step.worker_s = worker_s
    return step
"""

namespace: dict = {}
exec(compile(SETUP, "<bench_step setup>", "exec"), namespace)


@pytest.mark.parametrize("provider", ["mel_on_device", "worker_mel", "torch"])
def test_train_step(benchmark, provider, monkeypatch):
    if provider == "torch":
        monkeypatch.setenv("AVFAST_BACKEND", TORCH_OPS)
    torch.manual_seed(0)
    worker = provider == "worker_mel"
    step = namespace["make_step"](worker_mel=worker)
    step()  # warm-up: first-call dispatch, allocator
    step_s, ops_s = time_ops(step, OPS)
    env = f"import os\nos.environ['AVFAST_BACKEND'] = {TORCH_OPS!r}\n" if provider == "torch" else ""
    memory = peak_rss_subprocess(env + SETUP + f"\nstep = make_step(worker_mel={worker})\n"
                                 "for _ in range(3):\n    step()\n")
    run(benchmark, step, group=f"train_step demo model batch {BATCH} (fp32 CPU)", provider=provider,
        baseline=provider == "torch", items=BATCH, unit="clips", rounds=size(5, 1), peak_bytes=memory["peak_bytes"],
        ops_forward_ms=1000 * ops_s, ops_forward_share=ops_s / step_s, worker_mel_ms=1000 * step.worker_s,
        backend=os.environ.get("AVFAST_BACKEND", "auto"))
