"""Shot-boundary detection and the shot manifest.

Frames are decoded at low resolution (swscale on FFmpeg's side) and compared frame to frame: by
colour histograms (``"histogram"``: half the L1 distance of per-channel histograms, in [0, 1]) or
by pixels (``"pixel"``: mean absolute difference of RGB values / 255). A difference above
``threshold`` starts a new shot. ``keep_shots`` applies seed 001's filter (3-12 s) and
``build_manifest`` writes one manifest line per kept shot.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from avfast.data.errors import DataError, decoding, open_media
from avfast.data.manifest import Clip, write_manifest

__all__ = ["frame_differences", "detect_shots", "keep_shots", "build_manifest"]

DEFAULT_THRESHOLDS = {"histogram": 0.35, "pixel": 0.12}


def _signature(rgb: np.ndarray, method: str, bins: int) -> np.ndarray:
    if method == "pixel":
        return rgb.astype(np.float32) / 255.0
    hist = [np.bincount((rgb[..., c].ravel().astype(np.int32) * bins) >> 8, minlength=bins) for c in range(3)]
    return np.concatenate(hist).astype(np.float32) / (rgb.shape[0] * rgb.shape[1])


def frame_differences(path, method: str = "histogram", size: tuple[int, int] = (36, 64), bins: int = 16):
    """(times (N,), diffs (N,), end): each frame's time and its difference to the previous frame
    (``diffs[0] = 0``), and the stream's end time in seconds."""
    if method not in DEFAULT_THRESHOLDS:
        raise ValueError(f"method must be one of {sorted(DEFAULT_THRESHOLDS)} ({method!r} given)")
    path = os.fspath(path)
    times, diffs, prev = [], [], None
    with open_media(path, "video") as container:
        if not container.streams.video:
            raise DataError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        with decoding(path, "video decoding"):
            for frame in container.decode(stream):
                sig = _signature(frame.to_ndarray(format="rgb24", width=size[1], height=size[0]), method, bins)
                if prev is None:
                    d = 0.0
                elif method == "pixel":
                    d = float(np.abs(sig - prev).mean())
                else:
                    d = float(np.abs(sig - prev).sum() / 6.0)  # 3 channels, each histogram sums to 1
                times.append(float(frame.time or 0.0))
                diffs.append(d)
                prev = sig
        if not times:
            raise DataError(path, "no decodable video frame")
        step = 1.0 / float(stream.average_rate or 25)
        end = times[-1] + step
    return np.asarray(times), np.asarray(diffs), end


def detect_shots(path, method: str = "histogram", threshold: float | None = None, min_gap: float = 0.5,
                 **kwargs) -> list[tuple[float, float]]:
    """Shots of a video as ``[(start, end), ...]`` seconds, cut where the frame difference exceeds
    ``threshold`` (default per method: histogram 0.35, pixel 0.12); cuts closer than ``min_gap`` s
    to the previous one (flashes, fast motion) are ignored."""
    times, diffs, end = frame_differences(path, method, **kwargs)
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    cuts = [times[0]]
    for t, d in zip(times[1:], diffs[1:]):
        if d > threshold and t - cuts[-1] >= min_gap:
            cuts.append(t)
    cuts.append(end)
    return [(float(a), float(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def keep_shots(shots: Iterable[tuple[float, float]], min_len: float = 3.0, max_len: float = 12.0):
    """Shots whose length is in ``[min_len, max_len]`` (seed 001 keeps 3-12 s)."""
    return [(a, b) for a, b in shots if min_len - 1e-6 <= b - a <= max_len + 1e-6]


def build_manifest(videos: Sequence, out, *, min_len: float = 3.0, max_len: float = 12.0, progress: bool = False,
                   **detect_kwargs):
    """Detect shots in each video and write one manifest line per kept shot; returns the clips.

    ``videos`` items are paths (audio: the file's own streams, by language tag, else ``track<i>``;
    source: the file name) or dicts with ``video`` and optional ``audio``, ``source``, ``primary``,
    ``separated``.
    """
    from avfast.data.audio import audio_tracks
    from avfast.train.progress import track

    clips = []
    for item in track(videos, desc="shots", unit="video", enabled=progress):
        spec = {"video": os.fspath(item)} if not isinstance(item, dict) else dict(item)
        video = os.path.abspath(spec["video"])  # the manifest may live elsewhere
        audio = spec.get("audio")
        if audio is None:
            audio = {t["language"] or f"track{t['index']}": t["index"] for t in audio_tracks(video)}
        audio = {k: v if isinstance(v, int) else os.path.abspath(v) for k, v in audio.items()}
        source = spec.get("source") or os.path.splitext(os.path.basename(video))[0]
        for start, end in keep_shots(detect_shots(video, **detect_kwargs), min_len, max_len):
            clips.append(Clip(video=video, audio=audio, source=source, start=round(start, 6), end=round(end, 6),
                              primary=spec.get("primary"),
                              separated=os.path.abspath(spec["separated"]) if spec.get("separated") else None))
    write_manifest(out, clips)
    return clips
