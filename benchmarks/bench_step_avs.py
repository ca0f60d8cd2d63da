"""Seed 002 (ICL-AVS): one training step, avfast ops vs ``backend="torch"``; AVSBench metrics vs a numpy loop.

Step: batch 4 clips x 5 frames (S4), full model (MiT-b2 at 224 x 224; quick: MiT-tiny at 64 x 64),
every loss term, Adam. Both providers run the same weights and data in float32; only the ops'
backend differs (``cross_attention`` in MiT and the attention blocks, ``contrastive_loss`` in CDCL).
``ops_forward_ms``: time inside those op calls during the forward (timed wrappers, synchronised;
the backward is not split out), reported with its share of the step.

Metrics: J and F (255 thresholds) of 1,000 frames of 224 x 224 (quick: 50), ``avfast.metrics``
(vectorised, one pass) vs AVSBench's per-frame, per-threshold loop written in numpy.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from _harness import run, size, time_ops, train_step

BATCH, FRAMES = 4, 5
IMAGE = size(224, 64)
BACKBONE = size("mit_b2", "mit_tiny")
METRIC_FRAMES = size(1000, 50)


# where the model looks the fused ops up (their share of the step is timed there)
OPS = (("avfast.models.mit", "cross_attention"), ("avfast.nn.attention", "cross_attention"),
       ("avfast.models.icl_avs", "contrastive_loss"))


def _make_step(backend: str):
    from avfast.models.icl_avs import ICLAVSLoss, ICLAVSLossConfig, build_icl_avs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    kw = {"dim": 32, "heads": 2, "latent_dim": 16} if BACKBONE == "mit_tiny" else {}
    model = build_icl_avs(task="s4", backbone=BACKBONE, backend=backend, **kw).to(device)
    loss = ICLAVSLoss(ICLAVSLossConfig(backend=backend))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(BATCH, FRAMES, 3, IMAGE, IMAGE, generator=g).to(device)
    audio = torch.randn(BATCH, FRAMES, 128, generator=g).to(device)
    masks = (torch.rand(BATCH, FRAMES, IMAGE, IMAGE, generator=g) > 0.7).float().to(device)
    return train_step(lambda: loss(model(frames, audio), masks)[0], opt)


@pytest.mark.parametrize("provider", ["avfast", "torch"])
def test_train_step_avs(benchmark, provider):
    step = _make_step("auto" if provider == "avfast" else "torch")
    step()  # warm-up
    step_s, ops_s = time_ops(step, OPS)
    run(benchmark, step, group=f"ICL-AVS train step {BACKBONE} {BATCH}x{FRAMES} frames {IMAGE}px (fp32)",
        provider=provider, baseline=provider == "torch", items=BATCH * FRAMES, unit="frames", rounds=size(3, 1),
        ops_forward_ms=1000 * ops_s, ops_forward_share=ops_s / step_s)


def _numpy_loop(prob: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """AVSBench's evaluation as its per-frame, per-threshold loops, in numpy."""
    thresholds = np.linspace(0, 1 - 1e-10, 255)
    ious, f_sum, f_frames = [], np.zeros(255), 0
    for p, g in zip(prob, gt):
        b = p > 0.5
        if g.sum() == 0:
            ious.append((~b & (g == 0)).sum() / g.size)
        else:
            ious.append((b & (g > 0)).sum() / ((b | (g > 0)).sum() + 1e-7))
            prec, rec = np.zeros(255), np.zeros(255)
            for i, t in enumerate(thresholds):
                binary = p >= t
                tp = (binary & (g > 0)).sum()
                prec[i], rec[i] = tp / (binary.sum() + 1e-20), tp / (g.sum() + 1e-20)
            with np.errstate(invalid="ignore", divide="ignore"):
                f = 1.3 * prec * rec / (0.3 * prec + rec)
            f_sum += np.nan_to_num(f)
            f_frames += 1
    return float(np.mean(ious)), float((f_sum / max(f_frames, 1)).max())


@pytest.mark.parametrize("provider", ["avfast", "numpy_loop"])
def test_metrics_avs(benchmark, provider):
    from avfast.metrics import f_score, mask_iou

    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(METRIC_FRAMES, 224, 224, generator=g) > 0.8).float()
    gt[::10] = 0
    prob = (0.6 * gt + 0.5 * torch.rand(METRIC_FRAMES, 224, 224, generator=g)).clamp(0, 1)
    if provider == "avfast":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        prob, gt = prob.to(device), gt.to(device)

        def fn():
            out = (mask_iou(prob, gt).item(), f_score(prob, gt).item())
            return out
    else:
        p, t = prob.numpy(), gt.numpy()

        def fn():
            return _numpy_loop(p, t)

    result = run(benchmark, fn, group=f"AVSBench J + F, {METRIC_FRAMES} frames 224x224", provider=provider,
                 baseline=provider == "numpy_loop", items=METRIC_FRAMES, unit="frames", rounds=size(2, 1))
    j, f = _numpy_loop(prob.cpu().numpy()[:20], gt.cpu().numpy()[:20])
    assert abs(mask_iou(prob[:20], gt[:20]).item() - j) < 1e-5 and abs(f_score(prob[:20], gt[:20]).item() - f) < 1e-5
    assert result is not None
