"""GPU data pipeline: DALI (NVDEC) clips/s against PyAV DataLoader workers on all CPU cores.

One clip = 16 frames uniform over 3 s at 25 fps -> random short side 256-320 -> 224 crop -> flip ->
normalise (on the GPU for DALI, in the workers for PyAV). Target: DALI >= 5x PyAV with the same CPUs.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from _timing import row

BATCH = 32
BATCHES = 8
WINDOW = 3.0


class _PyAVClips(torch.utils.data.Dataset):
    def __init__(self, video, starts):
        self.video, self.starts = video, starts

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        from avfast.data import PyAVVideoReader, VideoAugment

        frames = PyAVVideoReader(threads=1).read(self.video, self.starts[i], WINDOW, num_frames=16, fps=25.0,
                                                 max_short_side=320)
        return VideoAugment()(frames, torch.Generator().manual_seed(i))


def _movie(tmp, width, height):
    from avfast.data import make_demo_data, read_manifest

    manifest = make_demo_data(tmp, num_movies=1, shots_per_movie=8, shot_seconds=(4.0, 5.0), width=width,
                              height=height, voice="synthetic", seed=0)
    return read_manifest(manifest)[0].video


def _pyav_ms(video, starts) -> float:
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(_PyAVClips(video, starts), batch_size=BATCH, num_workers=workers,
                                         pin_memory=True, prefetch_factor=4, persistent_workers=False)
    t0 = time.perf_counter()
    for batch in loader:
        batch.cuda(non_blocking=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / BATCHES


def _dali_ms(video, starts) -> float:
    from avfast.data import DaliVideoReader, VideoAugment

    reader, aug = DaliVideoReader(batch_size=BATCH), VideoAugment()
    gen = torch.Generator().manual_seed(0)  # crop/flip draws; the pixels stay on the GPU
    clips = [dict(path=video, start=s, duration=WINDOW, num_frames=16, fps=25.0) for s in starts]
    for frames in reader.read_batch(clips[:BATCH]):  # warm-up: decoder and pipeline set-up
        aug(frames, gen)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for lo in range(0, len(clips), BATCH):
        torch.stack([aug(f, gen) for f in reader.read_batch(clips[lo:lo + BATCH])])
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / BATCHES


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in [(640, 360), (1280, 720)]:
            video = _movie(os.path.join(tmp, f"{height}p"), width, height)
            starts = np.random.default_rng(0).uniform(0.5, 8 * 4.0 - WINDOW, BATCH * BATCHES).tolist()
            case = f"batch {BATCH} clips 16x224 from {height}p H.264"
            ms = _pyav_ms(video, starts)
            rows.append(row("data", case, f"PyAV x{os.cpu_count()} workers", ms, baseline=True,
                            clips_per_s=BATCH / ms * 1e3))
            try:
                ms = _dali_ms(video, starts)
            except ImportError as exc:
                print(f"bench_data: DALI skipped: {exc}")
                continue
            rows.append(row("data", case, "DALI (NVDEC) + GPU augment", ms, clips_per_s=BATCH / ms * 1e3))
    return rows
