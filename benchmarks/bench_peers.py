"""avfast against the libraries users already know, each in the same run, with an agreement check.

Optional peers (each group skips with its reason when the package is missing; none is needed by
``make test``): faiss-cpu (IndexFlatIP / IndexFlatL2 exact, IndexHNSWFlat approximate), nnAudio and
librosa (log-mel), open_clip's ClipLoss (its loss module only, loaded from the file so torchvision is
not needed). Every row records the agreement with its peer in extra_info: index agreement for
top-k, |loss difference| for InfoNCE, Pearson r of the log-mels.

    pip install faiss-cpu nnAudio; pip install --no-deps open_clip_torch
    python -m avfast.cli bench peers            # --quick: smaller sizes
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _harness import run, size
from avfast.ops import affinity_topk, contrastive_loss, mel_spectrogram
from avfast.ops._mel_config import MelConfig

THREADS = torch.get_num_threads()
B_TOPK, D, K = size(8192, 1024), 256, 5
B_LOSS, D_LOSS = size(4096, 512), 512
B_MEL, SECONDS = size(32, 4), 10


def _faiss():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install faiss-cpu)")
    faiss.omp_set_num_threads(THREADS)   # the same threads as torch
    return faiss


def _unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _agreement(idx, ref) -> float:
    return float((np.asarray(idx) == np.asarray(ref)).mean())


# Top-k -------------------------------------------------------------------------------------------


TOPK_IP = f"peers: exact top-{K} inner product B=N={B_TOPK} D={D} (unit rows)"
TOPK_L2 = f"peers: exact top-{K} L2 B=N={B_TOPK} D={D}"
TOPK_APPROX = f"peers: approximate top-{K} B=N={B_TOPK} D={D} (recall vs exact)"


@pytest.mark.parametrize("provider", ["faiss IndexFlatIP", "avfast cpp"])
def test_topk_inner_product(benchmark, provider):
    faiss = _faiss()
    x, y = _unit_rows(B_TOPK, D, 0), _unit_rows(B_TOPK, D, 1)
    index = faiss.IndexFlatIP(D)
    index.add(y.numpy())
    ref = index.search(x.numpy(), K)[1]
    if provider.startswith("faiss"):
        out = run(benchmark, index.search, x.numpy(), K, group=TOPK_IP, provider=provider, baseline=True, items=B_TOPK,
                  unit="queries")
        idx = out[1]
    else:
        out = run(benchmark, lambda: affinity_topk(x, y, K, metric="dot", backend="cpp"), group=TOPK_IP,
                  provider=provider, items=B_TOPK, unit="queries")
        idx = out[1].numpy()
    benchmark.extra_info["agreement"] = agree = _agreement(idx, ref)
    assert agree > 0.999, f"{provider} picks other neighbours than IndexFlatIP ({agree:.4f})"


@pytest.mark.parametrize("provider", ["faiss IndexFlatL2", "avfast cpp"])
def test_topk_l2(benchmark, provider):
    faiss = _faiss()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(B_TOPK, D, generator=g), torch.randn(B_TOPK, D, generator=g)
    index = faiss.IndexFlatL2(D)
    index.add(y.numpy())
    ref = index.search(x.numpy(), K)[1]
    if provider.startswith("faiss"):
        idx = run(benchmark, index.search, x.numpy(), K, group=TOPK_L2, provider=provider, baseline=True,
                  items=B_TOPK, unit="queries")[1]
    else:
        idx = run(benchmark, lambda: affinity_topk(x, y, K, metric="neg_l2", backend="cpp"), group=TOPK_L2,
                  provider=provider, items=B_TOPK, unit="queries")[1].numpy()
    benchmark.extra_info["agreement"] = agree = _agreement(idx, ref)
    assert agree > 0.999, f"{provider} picks other neighbours than IndexFlatL2 ({agree:.4f})"


@pytest.mark.parametrize("provider", ["faiss IndexHNSWFlat (M=32, efSearch=64)", "avfast cpp bf16 search"])
def test_topk_approximate(benchmark, provider):
    faiss = _faiss()
    x, y = _unit_rows(B_TOPK, D, 3), _unit_rows(B_TOPK, D, 4)
    exact = affinity_topk(x, y, K, metric="dot", backend="cpp")[1].numpy()
    if provider.startswith("faiss"):
        index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        index.add(y.numpy())              # graph build not timed (it is the index's one-off cost)
        index.hnsw.efSearch = 64
        idx = run(benchmark, index.search, x.numpy(), K, group=TOPK_APPROX, provider=provider, baseline=True,
                  items=B_TOPK, unit="queries")[1]
    else:
        idx = run(benchmark, lambda: affinity_topk(x, y, K, metric="dot", compute_dtype=torch.bfloat16, backend="cpp"),
                  group=TOPK_APPROX, provider=provider, items=B_TOPK, unit="queries")[1].numpy()
    recall = float((idx[:, :, None] == exact[:, None, :]).any(-1).mean())
    benchmark.extra_info["recall"] = recall   # HNSW's recall is the peer's trade-off: recorded, not asserted
    assert provider.startswith("faiss") or recall > 0.9, f"{provider} recall@{K} {recall:.3f}"


# InfoNCE -----------------------------------------------------------------------------------------


def _clip_loss_module():
    try:
        spec = importlib.util.find_spec("open_clip")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch not installed (pip install --no-deps open_clip_torch)")
    path = os.path.join(spec.submodule_search_locations[0], "loss.py")
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)   # only the loss module: no torchvision import
    return module


LOSS = f"peers: InfoNCE fwd+bwd B={B_LOSS} D={D_LOSS}"


@pytest.mark.parametrize("provider", ["open_clip ClipLoss", "avfast chunked", "avfast cpp"])
def test_infonce(benchmark, provider):
    clip = _clip_loss_module().ClipLoss()
    a0, b0 = _unit_rows(B_LOSS, D_LOSS, 5), _unit_rows(B_LOSS, D_LOSS, 6)
    scale = torch.tensor(1 / 0.07)

    def step(fn):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        return loss.detach()

    ref = step(lambda a, b: clip(a, b, scale))
    if provider.startswith("open_clip"):
        loss = run(benchmark, step, lambda a, b: clip(a, b, scale), group=LOSS, provider=provider, baseline=True,
                   items=B_LOSS, unit="pairs")
    else:
        backend = provider.split()[-1]
        loss = run(benchmark, step, lambda a, b: contrastive_loss(a, b, tau=0.07, normalize=False, backend=backend),
                   group=LOSS, provider=provider, items=B_LOSS, unit="pairs")
    benchmark.extra_info["abs_loss_diff"] = diff = abs(float(loss) - float(ref))
    assert diff < 1e-3 * max(1.0, abs(float(ref))), f"{provider} loss {float(loss)} vs ClipLoss {float(ref)}"


# Log-mel -----------------------------------------------------------------------------------------


EVENT = MelConfig.preset("event", freq_masks=0, time_masks=0)
MEL = f"peers: log-mel {B_MEL} x {SECONDS} s at 16 kHz (event: n_fft 512, win 320, hop 160, 80 mels)"


def _pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("provider", ["nnAudio MelSpectrogram", "librosa", "avfast cpp"])
def test_log_mel(benchmark, provider):
    t = torch.arange(SECONDS * 16000) / 16000
    f0 = torch.linspace(100.0, 400.0, B_MEL)[:, None]     # a chirp per item: structure for the agreement check
    wave = torch.sin(2 * torch.pi * f0 * t * (1 + t)) * 0.3 + 0.01 * torch.randn(B_MEL, t.numel(), generator=torch.Generator().manual_seed(7))
    ours = mel_spectrogram(wave[:1], EVENT, backend="cpp")[0]
    kw = dict(sr=16000, n_fft=512, win_length=320, hop_length=160, n_mels=80, center=True, htk=True, norm=None)
    if provider.startswith("nnAudio"):
        features = pytest.importorskip("nnAudio.features", reason="nnAudio not installed (pip install nnAudio)")
        layer = features.MelSpectrogram(**kw, pad_mode="reflect", verbose=False)
        fn = lambda w: torch.log(layer(w) + 1e-6)
        out = run(benchmark, fn, wave, group=MEL, provider=provider, baseline=True, items=B_MEL * SECONDS,
                  unit="audio s")[0]
    elif provider == "librosa":
        librosa = pytest.importorskip("librosa", reason="librosa not installed")
        fn = lambda w: np.log(librosa.feature.melspectrogram(y=w, **kw, pad_mode="reflect") + 1e-6)
        out = run(benchmark, fn, wave.numpy(), group=MEL, provider=provider, items=B_MEL * SECONDS, unit="audio s")[0]
    else:
        out = run(benchmark, lambda w: mel_spectrogram(w, EVENT, backend="cpp"), wave, group=MEL, provider=provider,
                  items=B_MEL * SECONDS, unit="audio s")[0]
    out = torch.as_tensor(np.asarray(out))
    frames = min(out.shape[-1], ours.shape[-1])
    benchmark.extra_info["pearson_r_vs_avfast"] = r = _pearson(out[..., :frames], ours[..., :frames])
    assert r > 0.99, f"{provider} log-mel disagrees with avfast's (r={r:.3f})"
