"""avfast against the libraries users already know, each in the same run, with an agreement check.

Optional peers (each group skips with its reason when the package is missing; none is needed by
``make test``): faiss-cpu (IndexFlatIP / IndexFlatL2 exact, IndexHNSWFlat approximate), nnAudio and
librosa (log-mel), open_clip's ClipLoss (its loss module only, loaded from the file so torchvision is
not needed), decord and torchcodec (video decode; torchcodec also needs FFmpeg's shared libraries).
Every row records the agreement with its peer in extra_info: index agreement for top-k, |loss
difference| for InfoNCE, Pearson r of the log-mels, frame timestamps and mean |pixel difference|
for decoding; and ``op_peak_bytes``, the timed calls' working memory.

    pip install faiss-cpu nnAudio decord torchcodec; pip install --no-deps open_clip_torch
    python -m avfast.cli bench peers            # --quick: smaller sizes
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _harness import run as _run
from _harness import size
from avfast.ops import affinity_topk, contrastive_loss, mel_spectrogram
from avfast.ops._mel_config import MelConfig

THREADS = torch.get_num_threads()
run = functools.partial(_run, peak=True)   # every row: time and the timed calls' working memory
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


# Video decode ------------------------------------------------------------------------------------

# seed 001's clip recipe (DataConfig defaults): 16 frames uniform over a 3 s window at 25 fps, frames
# pre-scaled to a short side <= 320 (a 360p source is within the 25 % margin: native size, as the trainer)
CLIPS, WINDOW, FRAMES, FPS = size(8, 2), 3.0, 16, 25.0
DECODE = f"peers: video decode {CLIPS} clips x {FRAMES} frames / {WINDOW:.0f} s at {FPS:.0f} fps, 640x360 H.264, 1 thread"


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    from avfast.data import make_demo_data, read_manifest

    manifest = make_demo_data(tmp_path_factory.mktemp("peers_decode"), num_movies=1, shots_per_movie=size(8, 2),
                              shot_seconds=(4.0, 5.0), width=640, height=360, voice="synthetic", seed=0)
    path = read_manifest(manifest)[0].video
    starts = sorted(np.random.default_rng(0).uniform(0.5, size(8, 2) * 4.0 - WINDOW, CLIPS).round(2).tolist())
    return path, starts


def _torchcodec():
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        pytest.skip("torchcodec not installed (pip install torchcodec; it needs FFmpeg's shared libraries)")
    except Exception as exc:   # installed but unusable: no FFmpeg libraries, or built for another torch/CUDA
        pytest.skip(f"torchcodec unusable here: {str(exc).strip().splitlines()[0][:200]}")
    return VideoDecoder


def _decord():
    decord = pytest.importorskip("decord", reason="decord not installed (pip install decord)")
    decord.bridge.set_bridge("native")
    return decord


@pytest.mark.parametrize("provider", ["decord VideoReader", "torchcodec VideoDecoder", "avfast PyAVVideoReader"])
def test_video_decode(benchmark, movie, provider):
    from avfast.data import PyAVVideoReader, clip_times
    from avfast.data.video import _EPS, _frame_index, _shown_at

    path, starts = movie
    reader = PyAVVideoReader(threads=1)
    avfast_read = lambda: [reader.read(path, s, WINDOW, num_frames=FRAMES, fps=FPS, max_short_side=320) for s in starts]
    targets = [clip_times(s, WINDOW, FRAMES, FPS) for s in starts]
    pts = _frame_index(path, os.path.getmtime(path))[0]
    expected_pts = np.concatenate([pts[_shown_at(pts, t)] for t in targets])
    if provider.startswith("decord"):
        decord = _decord()

        def read():   # a user's dataset: open per clip, frame indices from decord's own timestamps
            clips, shown = [], []
            for t in targets:
                vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
                stamps = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]
                idx = _shown_at(stamps, t)
                clips.append(torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy()).permute(0, 3, 1, 2))
                shown.append(stamps[idx])
            return clips, np.concatenate(shown)
    elif provider.startswith("torchcodec"):
        decoder_cls = _torchcodec()

        def read():   # the grid times get avfast's float margin: "played at" takes pts <= t with no slack
            clips, shown = [], []
            for t in targets:
                batch = decoder_cls(path, seek_mode="exact", num_ffmpeg_threads=1).get_frames_played_at(
                    seconds=(t + _EPS).tolist())
                clips.append(batch.data)
                shown.append(batch.pts_seconds.numpy())
            return clips, np.concatenate(shown)
    else:
        read = lambda: (avfast_read(), expected_pts)
    clips, shown = run(benchmark, read, group=DECODE, provider=provider, baseline=provider.startswith("decord"),
                       items=CLIPS * FRAMES, unit="frames", rounds=3)
    ref = avfast_read()
    assert [c.shape for c in clips] == [r.shape for r in ref], f"{provider} frame shapes differ from avfast's"
    diff = torch.stack([(c.float() - r.float()).abs().mean() for c, r in zip(clips, ref)])
    benchmark.extra_info["mean_abs_pixel_diff_vs_avfast"] = float(diff.mean())
    benchmark.extra_info["max_pts_diff_s"] = pts_diff = float(np.abs(np.asarray(shown) - expected_pts).max())
    assert pts_diff < 1e-3, f"{provider} shows other frames than avfast (timestamps differ by {pts_diff:.3f} s)"
    assert float(diff.max()) < 1.0, f"{provider} pixels differ from avfast's (mean |diff| {float(diff.max()):.2f} / 255)"
