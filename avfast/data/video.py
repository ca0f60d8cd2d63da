"""Video readers with one interface: ``read(path, start, duration, num_frames, fps, sampling) -> uint8 (T, C, H, W)``.

- ``PyAVVideoReader`` (CPU default): FFmpeg through PyAV; seeks to the key frame before the clip,
  decodes only up to the last needed frame, converts (and optionally downscales, in swscale) only the
  frames it returns; FFmpeg frame threads.
- ``DaliVideoReader`` (NVIDIA GPUs): NVDEC through DALI's video decoder, batched, CUDA tensors out.
- ``TorchCodecVideoReader`` (optional): torchcodec's ``VideoDecoder`` (CPU or CUDA).

Frames are chosen by presentation timestamp, never by counting frames: the clip's target times are
``start + k / fps`` and each target takes the frame shown at that instant (the last frame with
``pts <= t``), so variable-frame-rate files and files whose rate differs from ``fps`` come out right
and audio read for the same ``(start, duration)`` covers the same interval.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from avfast.data.errors import DataError, decoding, open_media

__all__ = ["clip_times", "PyAVVideoReader", "DaliVideoReader", "TorchCodecVideoReader", "get_video_reader",
           "probe_video"]

_EPS = 1e-4  # seconds; absorbs float error between target grids and stored timestamps


def _check_fps(fps: float) -> None:
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a finite number > 0 ({fps} given)")


def clip_times(start: float, duration: float | None, num_frames: int | None, fps: float,
               sampling: str = "uniform") -> np.ndarray:
    """Target presentation times (seconds) of a clip's frames.

    The clip is resampled to ``fps``: its grid is ``start + k / fps`` for ``k < floor(duration * fps)``.
    ``sampling="uniform"`` takes ``num_frames`` grid points evenly spread over the whole clip (points
    repeat when the grid is shorter); ``"contiguous"`` takes the first ``num_frames`` points
    (``duration`` may then be None). ``num_frames=None`` takes the whole grid.
    """
    _check_fps(fps)
    if sampling not in ("uniform", "contiguous"):
        raise ValueError(f"sampling must be 'uniform' or 'contiguous' ({sampling!r} given)")
    if num_frames is not None and (not isinstance(num_frames, (int, np.integer)) or num_frames < 1):
        raise ValueError(f"num_frames must be an int >= 1 or None ({num_frames!r} given)")
    if sampling == "contiguous" and num_frames is not None:
        return start + np.arange(num_frames) / fps
    if duration is None or duration <= 0:
        raise ValueError(f"duration must be > 0 for uniform sampling ({duration} given)")
    n_grid = max(1, int(math.floor(duration * fps + 1e-6)))
    if num_frames is None:
        return start + np.arange(n_grid) / fps
    idx = np.linspace(0, n_grid - 1, num_frames).round().astype(np.int64)
    return start + idx / fps


def _output_size(width: int, height: int, size, max_short_side: int | None = None) -> tuple[int, int]:
    """(width, height) after scaling so the short side is ``size`` (int) or to ``size=(H, W)``;
    with ``size=None``, frames whose short side exceeds ``max_short_side`` by more than 25 % are
    scaled down to it (for smaller excess, swscale's scaling costs more than it saves downstream)."""
    if size is None:
        if max_short_side is None or min(width, height) <= 1.25 * max_short_side:
            return width, height
        size = max_short_side
    if isinstance(size, (tuple, list)):
        return int(size[1]), int(size[0])
    scale = size / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _video_stream(container, path):
    if not container.streams.video:
        raise DataError(path, "no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or ctx.name in ("none", ""):
        tag = stream.metadata.get("codec_tag") or getattr(stream, "codec_tag", "") or "unknown"
        raise DataError(path, f"unsupported video codec ({tag!r}: this FFmpeg build has no decoder for it)")
    return stream


def _stream_end(container, stream) -> float | None:
    """End time (s) of ``stream``: its duration, else the container's; None when neither is stored."""
    if stream.duration is not None and stream.time_base is not None:
        return float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None


def probe_video(path) -> dict:
    """Metadata without decoding: ``{"duration", "fps", "width", "height", "codec"}`` (duration in s)."""
    with open_media(path, "video") as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate
        return {"duration": _stream_end(container, stream), "fps": float(rate) if rate else None,
                "width": stream.codec_context.width, "height": stream.codec_context.height,
                "codec": stream.codec_context.name}


def _check_interval(path, start: float, duration: float | None, end: float | None, fps: float) -> float:
    """Validate ``start``/``duration`` against the stream end; return the duration to read."""
    _check_fps(fps)
    if not (start >= 0 and math.isfinite(start)):
        raise ValueError(f"start must be a finite number >= 0 ({start} given)")
    if end is not None and start >= end:
        raise DataError(path, f"clip starts at {start:.3f} s but the video ends at {end:.3f} s")
    if duration is None:
        if end is None:
            raise DataError(path, "stream duration unknown; pass duration")
        duration = end - start
    if end is not None and start + duration > end + 1.0 / fps + _EPS:
        raise DataError(path, f"clip [{start:.3f}, {start + duration:.3f}) s ends after the video ({end:.3f} s)")
    return duration


class PyAVVideoReader:
    """CPU video reader on PyAV (FFmpeg), the default.

    .. devices:: CPU

    Args:
        threads: FFmpeg decoding threads per reader (0 = FFmpeg's choice). In DataLoader workers
            keep it at 1-2 so workers x threads matches the cores.
        size: default output size: an int short side (aspect kept) or ``(H, W)``; scaling is done
            by swscale on the frames returned only (cheaper than resizing in torch). None = native.

    ``read`` returns a contiguous uint8 tensor (T, C, H, W), RGB.
    """

    def __init__(self, threads: int = 1, size: int | Sequence[int] | None = None):
        self.threads = threads
        self.size = size

    def read(self, path, start: float = 0.0, duration: float | None = None, num_frames: int | None = 16,
             fps: float = 25.0, sampling: str = "uniform", size=None,
             max_short_side: int | None = None) -> torch.Tensor:
        """Frames of ``[start, start + duration)`` resampled to ``fps``: uint8 (T, C, H, W).

        ``size`` overrides the reader's output size; ``max_short_side`` only ever scales down
        (a data loader's cheap pre-scale before its random resize; swscale, area filter).

        Raises ``DataError`` (naming ``path`` and the reason) for a missing, empty, corrupt or
        truncated file, a file without a video stream, an unsupported codec, or a clip outside the video.
        """
        path = os.fspath(path)
        with open_media(path, "video") as container:
            stream = _video_stream(container, path)
            duration = _check_interval(path, start, duration, _stream_end(container, stream), fps)
            times = clip_times(start, duration, num_frames, fps, sampling)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            with decoding(path, "video decoding"):
                size = size if size is not None else self.size
                frames = self._decode_at(container, stream, times, path, size, max_short_side)
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def _decode_at(container, stream, times: np.ndarray, path: str, size, max_short_side) -> list[np.ndarray]:
        """For each target time, the frame shown then (RGB HWC uint8); decode stops after the last."""
        first = float(times[0])
        if first > 0 and stream.time_base is not None:
            # backward=True lands on the key frame at or before `first`
            container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        step = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
        out: list[np.ndarray | None] = [None] * len(times)
        cache: list = [None, None]  # (decode counter, rgb array) of the last converted frame

        def rgb(frame, n: int) -> np.ndarray:
            if cache[0] != n:  # frames are visited in order: only the latest conversion can be reused
                w, h = _output_size(frame.width, frame.height, size, max_short_side)
                scaled = {"interpolation": "AREA"} if (w, h) != (frame.width, frame.height) else {}
                cache[:] = [n, frame.to_ndarray(format="rgb24", width=w, height=h, **scaled)]
            return cache[1]

        j, prev, prev_time = 0, None, None
        for n, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else (prev_time + step if prev_time is not None else 0.0)
            while j < len(times) and times[j] < t - _EPS:
                out[j] = rgb(prev, n - 1) if prev is not None else rgb(frame, n)
                j += 1
            if j == len(times):
                break
            prev, prev_time = frame, t
        if j < len(times):
            if prev is None:
                raise DataError(path, "no decodable video frame in the requested interval")
            if times[-1] > prev_time + 2 * step:
                raise DataError(path, f"video stream ends at {prev_time:.3f} s, clip needs {times[-1]:.3f} s "
                                      "(truncated file?)")
            while j < len(times):
                out[j] = rgb(prev, n)
                j += 1
        return out  # type: ignore[return-value]


@lru_cache(maxsize=4096)
def _frame_index(path: str, mtime: float) -> tuple[np.ndarray, float]:
    """Sorted presentation times of every frame of ``path`` (demux only, no decoding), and the end."""
    with open_media(path, "video") as container:
        stream = _video_stream(container, path)
        with decoding(path, "demuxing"):
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
        times = np.sort(np.asarray(pts, dtype=np.float64) * float(stream.time_base))
        return times, _stream_end(container, stream) or float(times[-1])


def frame_indices(path, times: np.ndarray) -> np.ndarray:
    """Index (in display order) of the frame shown at each of ``times`` (VFR safe, from timestamps)."""
    path = os.fspath(path)
    pts, _ = _frame_index(path, os.path.getmtime(path))
    return _shown_at(pts, times)


def _shown_at(pts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the last of the sorted frame times ``pts`` at or before each of ``times``."""
    return np.clip(np.searchsorted(pts, np.asarray(times) + _EPS, side="right") - 1, 0, len(pts) - 1)


# The DALI release the reader is written against (pinned in pyproject's ``gpu`` extra) and the exact
# arguments it passes: .ci/dali_schema_check.py checks every name against that release's operator
# schema (``nvidia.dali.backend.GetSchema``), which needs no GPU. "device" is DALI's placement argument,
# common to every operator.
DALI_VERSION = "2.4.0"
DALI_DECODER_SCHEMA = "decoders__Video"   # fn.decoders.video
DALI_DECODER_ARGS = ("device", "frames")
DALI_PIPELINE_ARGS = ("batch_size", "num_threads", "device_id", "prefetch_queue_depth")
DALI_SOURCE_ARGS = ("name", "dtype", "ndim")


class DaliVideoReader:
    """GPU video reader on NVIDIA DALI (NVDEC): batched decoding, CUDA uint8 tensors out.

    .. devices:: CUDA

    DALI is imported when the reader is built (``pip install "avfast[gpu]"``: nvidia-dali-cuda130 ==
    ``DALI_VERSION``, whose ``decoders.video`` schema the arguments below follow).
    Target times are turned into frame indices with a per-file timestamp index (demuxed once with
    PyAV, no decoding, cached), then DALI's ``decoders.video`` decodes exactly those frames of every
    file in the batch. ``read`` (one clip) and ``read_batch`` (many clips, one pipeline run) return
    (T, C, H, W) / list of (T, C, H, W) on ``cuda:device_id``.
    """

    def __init__(self, device_id: int | None = None, batch_size: int = 8, num_threads: int = 4):
        try:
            from nvidia.dali import fn, pipeline_def, types  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"DaliVideoReader needs NVIDIA DALI {DALI_VERSION}: pip install "
                              f"nvidia-dali-cuda130=={DALI_VERSION}") from exc
        if not torch.cuda.is_available():
            raise RuntimeError("DaliVideoReader needs a CUDA GPU; use PyAVVideoReader on CPU")
        self.device_id = torch.cuda.current_device() if device_id is None else device_id
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        decode = fn.decoders.video  # DALI >= 2.0 (DALI_VERSION): takes the frame indices as ``frames``

        # one feed_input per run(): a prefetch queue of 1 (the default 2 would wait for a second feed)
        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1)
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            return decode(encoded, device="mixed", frames=frames)

        p = pipe()
        p.build()
        return p

    def read_batch(self, clips: Sequence[dict]) -> list[torch.Tensor]:
        """Decode many clips; each dict has the ``read`` arguments (path, start, duration, num_frames, fps, sampling)."""
        if self._pipe is None:
            self._pipe = self._build()
        out: list[torch.Tensor] = []
        for lo in range(0, len(clips), self.batch_size):
            chunk = clips[lo:lo + self.batch_size]
            encoded, frames = [], []
            for c in chunk:
                path = os.fspath(c["path"])
                pts, end = _frame_index(path, os.path.getmtime(path))
                fps = c.get("fps", 25.0)
                duration = _check_interval(path, c.get("start", 0.0), c.get("duration"), end, fps)
                times = clip_times(c.get("start", 0.0), duration, c.get("num_frames", 16), fps,
                                   c.get("sampling", "uniform"))
                with open(path, "rb") as f:
                    encoded.append(np.frombuffer(f.read(), dtype=np.uint8))
                frames.append(_shown_at(pts, times).astype(np.int32))
            pad = self.batch_size - len(chunk)  # DALI runs fixed-size batches; repeat the last sample
            self._pipe.feed_input("encoded", encoded + encoded[-1:] * pad)
            self._pipe.feed_input("frames", frames + frames[-1:] * pad)
            (video,) = self._pipe.run()
            for i in range(len(chunk)):
                thwc = torch.from_dlpack(video[i])  # (T, H, W, C) uint8 on the GPU
                out.append(thwc.permute(0, 3, 1, 2).contiguous())
        return out

    def read(self, path, start: float = 0.0, duration: float | None = None, num_frames: int | None = 16,
             fps: float = 25.0, sampling: str = "uniform") -> torch.Tensor:
        """One clip as CUDA uint8 (T, C, H, W); prefer ``read_batch`` for throughput."""
        return self.read_batch([dict(path=path, start=start, duration=duration, num_frames=num_frames,
                                     fps=fps, sampling=sampling)])[0]


class TorchCodecVideoReader:
    """Reader on torchcodec's ``VideoDecoder`` (``pip install torchcodec``), CPU or CUDA decoding.

    Uses ``get_frames_played_at(seconds)``: the same "frame shown at time t" rule as the PyAV reader.
    """

    def __init__(self, device: str = "cpu"):
        try:
            from torchcodec.decoders import VideoDecoder
        except ImportError as exc:
            raise ImportError("TorchCodecVideoReader needs torchcodec: pip install torchcodec") from exc
        self._decoder_cls = VideoDecoder
        self.device = device

    def read(self, path, start: float = 0.0, duration: float | None = None, num_frames: int | None = 16,
             fps: float = 25.0, sampling: str = "uniform") -> torch.Tensor:
        """Frames of ``[start, start + duration)`` at ``fps``: uint8 (T, C, H, W) on ``device``."""
        path = os.fspath(path)
        end = probe_video(path)["duration"]
        duration = _check_interval(path, start, duration, end, fps)
        # the PyAV reader's float margin: a grid time a hair below a stored timestamp takes that frame
        times = clip_times(start, duration, num_frames, fps, sampling) + _EPS
        if end is not None:
            times = np.minimum(times, end - _EPS)
        try:
            decoder = self._decoder_cls(path, device=self.device, seek_mode="exact")
            return decoder.get_frames_played_at(seconds=times.tolist()).data
        except (RuntimeError, ValueError) as exc:
            raise DataError(path, f"torchcodec decoding failed: {exc}") from exc


_READERS = {"pyav": PyAVVideoReader, "dali": DaliVideoReader, "torchcodec": TorchCodecVideoReader}


def get_video_reader(name: str = "pyav", **kwargs):
    """A reader by name: ``"pyav"`` (CPU default), ``"dali"`` (GPU), ``"torchcodec"``."""
    if name not in _READERS:
        raise ValueError(f"unknown video reader {name!r}; choose from {sorted(_READERS)}")
    return _READERS[name](**kwargs)
