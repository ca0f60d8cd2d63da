"""Data pipeline throughput on CPU: clips/s of one worker (one thread), seed 001's clip recipe.

One clip = 16 frames (uniform over a 3 s window at 25 fps) -> random short side 256-320 -> random
224 crop -> flip -> normalise, plus 3 s of 48 kHz stereo audio -> mel (``dub`` preset, masks).

Providers (same clips, same mel call):
- ``avfast``: ``PyAVVideoReader`` (seek to the key frame, decode up to the last needed frame,
  convert and pre-scale only the 16 frames in swscale) + ``VideoAugment`` (crop, then resize the
  window) + ``load_audio`` (seek, decode the window).
- ``naive`` (baseline): what ``torchvision.io.read_video``-style loading does: decode from the file
  start through the clip, convert every frame to RGB, pick 16, resize whole frames, crop; decode the
  audio from the start and slice.
The sources are generated 640x360 and 1280x720 H.264 movies (key frame every second) with FLAC audio.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _harness import run, size

CLIPS = size(6, 2)
WINDOW = 3.0
SOURCES = size([(640, 360), (1280, 720)], [(640, 360)])


@pytest.fixture(scope="module", params=SOURCES, ids=lambda wh: f"{wh[1]}p")
def movie(request, tmp_path_factory):
    from avfast.data import make_demo_data, read_manifest

    width, height = request.param
    manifest = make_demo_data(tmp_path_factory.mktemp("bench_data"), num_movies=1, shots_per_movie=8,
                              shot_seconds=(4.0, 5.0), width=width, height=height, voice="synthetic", seed=0)
    clip = read_manifest(manifest)[0]
    rng = np.random.default_rng(0)
    end = 8 * 4.0 - WINDOW
    starts = sorted(rng.uniform(2.0, end, CLIPS).tolist())
    return clip.video, clip.audio["en"], starts, f"{height}p"


def _mel(wave, gen):
    from avfast.data import audio_features

    return audio_features(wave, "dub", masks=True, generator=gen)


def avfast_clips(video, audio, starts):
    from avfast.data import PyAVVideoReader, VideoAugment, load_audio

    reader, aug, gen = PyAVVideoReader(threads=1), VideoAugment(), torch.Generator().manual_seed(0)
    out = []
    for s in starts:
        frames = reader.read(video, s, WINDOW, num_frames=16, fps=25.0, max_short_side=320)
        wave = load_audio(audio, 48000, s, WINDOW, channels=2)
        out.append((aug(frames, gen), _mel(wave, gen)))
    return out


def naive_clips(video, audio, starts):
    import av

    from avfast.data import clip_times

    gen = torch.Generator().manual_seed(0)
    out = []
    for s in starts:
        with av.open(video) as c:  # decode everything from the start, convert every frame
            frames, times = [], []
            for f in c.decode(video=0):
                if f.time > s + WINDOW:
                    break
                frames.append(f.to_ndarray(format="rgb24"))
                times.append(f.time)
        idx = np.searchsorted(times, clip_times(s, WINDOW, 16, 25.0) + 1e-4, side="right") - 1
        x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float()
        short = 256 + 64 * float(torch.rand((), generator=gen))
        x = F.interpolate(x, scale_factor=short / min(x.shape[-2:]), mode="bilinear", antialias=True)
        y0 = int(torch.randint(0, x.shape[-2] - 223, (), generator=gen))
        x0 = int(torch.randint(0, x.shape[-1] - 223, (), generator=gen))
        x = x[..., y0:y0 + 224, x0:x0 + 224]
        x = ((x / 255 - 0.45) / 0.225).permute(1, 0, 2, 3)
        with av.open(audio) as c:  # whole audio file, then slice
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
            chunks = [o.to_ndarray() for f in c.decode(audio=0) for o in resampler.resample(f)]
        wave = torch.from_numpy(np.concatenate(chunks, axis=1)[:, int(s * 48000): int(s * 48000) + int(WINDOW * 48000)])
        out.append((x, _mel(wave, gen)))
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one DataLoader worker
    yield
    torch.set_num_threads(before)


def test_clips_avfast(benchmark, movie):
    out = run(benchmark, avfast_clips, *movie[:3], group=f"data: clip 16x224 + mel, 1 worker, {movie[3]} source",
              provider="avfast PyAV", items=len(movie[2]), unit="clips", rounds=3)
    assert out[0][0].shape == (3, 16, 224, 224) and out[0][1].shape == (2, 96, 288)


def test_clips_naive(benchmark, movie):
    out = run(benchmark, naive_clips, *movie[:3], group=f"data: clip 16x224 + mel, 1 worker, {movie[3]} source",
              provider="naive decode-all", baseline=True, items=len(movie[2]), unit="clips", rounds=3)
    assert out[0][0].shape == (3, 16, 224, 224)


def video_only(video, starts):
    from avfast.data import PyAVVideoReader, VideoAugment

    reader, aug, gen = PyAVVideoReader(threads=1), VideoAugment(), torch.Generator().manual_seed(0)
    return [aug(reader.read(video, s, WINDOW, num_frames=16, fps=25.0, max_short_side=320), gen) for s in starts]


def audio_only(audio, starts):
    from avfast.data import load_audio

    gen = torch.Generator().manual_seed(0)
    return [_mel(load_audio(audio, 48000, s, WINDOW, channels=2), gen) for s in starts]


def test_part_video(benchmark, movie):
    run(benchmark, video_only, movie[0], movie[2], group=f"data: clip parts, 1 worker, {movie[3]} source",
        provider="video 16x224",
        items=len(movie[2]), unit="clips", rounds=3)


def test_part_audio(benchmark, movie):
    run(benchmark, audio_only, movie[1], movie[2], group=f"data: clip parts, 1 worker, {movie[3]} source",
        provider="audio 3 s + mel",
        items=len(movie[2]), unit="clips", rounds=3)
