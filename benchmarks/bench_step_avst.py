"""Seed 003 (AVST): one training step, avfast ops vs ``backend="torch"``.

Batch 64 questions x T = 10 segments, dim 512, 512 x 14 x 14 visual maps and 128-d audio features
(the public setting; quick: the tiny model, batch 8, 4 x 4 maps), the full model (TG + SG, with the
negative visual pass of the match head), CE_qa + 0.5 CE_match, Adam. Both providers run the same
weights and data in float32; only the ops' backend differs (``cross_attention`` in spatial grounding,
head dim 512, and in temporal grounding's ``CrossModalAttention``). ``ops_forward_ms``: time inside
those op calls during the forward (synchronised wrappers), with its share of the step.
"""
from __future__ import annotations


import pytest
import torch

from _harness import run, size, time_ops, train_step

BATCH = size(64, 8)
GRID = size(14, 4)


OPS = (("avfast.models.avst", "cross_attention"), ("avfast.nn.attention", "cross_attention"))


def _make_step(backend: str):
    from avfast.models.avst import AVSTLoss, avst_tiny, build_avst, negative_visual

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = (build_avst if GRID == 14 else avst_tiny)(backend=backend).to(device)
    dim = model.config.visual_dim
    loss = AVSTLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(BATCH, 10, 128, generator=g).to(device)
    visual = torch.randn(BATCH, 10, dim, GRID, GRID, generator=g).relu().to(device)
    question = torch.randint(1, 93, (BATCH, 14), generator=g).to(device)
    answer = torch.randint(0, 42, (BATCH,), generator=g).to(device)
    return train_step(lambda: loss(model(audio, visual, question, visual_neg=negative_visual(visual)), answer)[0], opt)


@pytest.mark.parametrize("provider", ["avfast", "torch"])
def test_train_step_avst(benchmark, provider):
    step = _make_step("auto" if provider == "avfast" else "torch")
    step()  # warm-up
    step_s, ops_s = time_ops(step, OPS)
    run(benchmark, step, group=f"AVST train step {BATCH} questions x 10 segments, {GRID}x{GRID} maps (fp32)",
        provider=provider, baseline=provider == "torch", items=BATCH, unit="questions", rounds=size(3, 1),
        ops_forward_ms=1000 * ops_s, ops_forward_share=ops_s / step_s)
