"""Seed 000 (PACS, DCL): one training step of LateFusion w/ DCL on features, avfast ops vs ``backend="torch"``.

Batch 64 pairs of pre-extracted features (frozen backbones out): text 1024, video 8 x 768 (DSE on
video, Bi-LSTM 256), audio 768, CLM k = 5, tau = 2; every loss term (triplet, counterfactual
triplet, DSE of both objects), AdamW. Both providers run the same weights and data in float32; only
the ops' backend differs (``affinity_topk`` in CLM, ``contrastive_loss`` in the DSE's NCE terms).
``ops_forward_ms``: time inside those op calls during the forward (timed wrappers, synchronised;
the backward is not split out), reported with its share of the step.
"""
from __future__ import annotations


import pytest
import torch

from _harness import run, size, time_ops, train_step

BATCH, FRAMES = 64, 8
WIDTH = size(768, 768)


OPS = (("avfast.models.dcl", "affinity_topk"), ("avfast.models.dcl", "contrastive_loss"))


def _make_step(backend: str):
    from avfast.models.dcl import DCLLossConfig, dcl_objective, late_fusion_dcl

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = late_fusion_dcl(video_dim=WIDTH, audio_dim=WIDTH, backend=backend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=5e-5)
    g = torch.Generator().manual_seed(0)
    batch = {"text": torch.randn(BATCH, 1024, generator=g), "label": torch.randint(0, 2, (BATCH,), generator=g)}
    for w in (1, 2):
        batch[f"video{w}"] = torch.randn(BATCH, FRAMES, WIDTH, generator=g)
        batch[f"audio{w}"] = torch.randn(BATCH, WIDTH, generator=g)
    batch = {k: v.to(device) for k, v in batch.items()}
    cfg = DCLLossConfig()
    return train_step(lambda: dcl_objective(model, batch, cfg)[0], opt)


@pytest.mark.parametrize("provider", ["avfast", "torch"])
def test_train_step_pacs(benchmark, provider):
    step = _make_step("auto" if provider == "avfast" else "torch")
    step()  # warm-up
    step_s, ops_s = time_ops(step, OPS)
    run(benchmark, step, group=f"LateFusion w/ DCL train step, {BATCH} pairs of features (fp32)", provider=provider,
        baseline=provider == "torch", items=BATCH, unit="pairs", rounds=size(5, 1),
        ops_forward_ms=1000 * ops_s, ops_forward_share=ops_s / step_s)
