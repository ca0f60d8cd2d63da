"""Writers of small test media with known content (PyAV), shared by the data tests."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def write_indexed_video(path, times, size=(48, 64), codec="libx264", step=3, container_format=None):
    """Video whose frame k is uniform gray ``k * step`` shown at ``times[k]`` seconds (VFR allowed)."""
    h, w = size
    with av.open(str(path), "w", format=container_format) as out:
        rate = max(1, round(1.0 / float(np.median(np.diff(times))))) if len(times) > 1 else 25
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "0", "g": "10", "bf": "0"}
        for k, t in enumerate(times):
            img = np.full((h, w, 3), (k * step) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = round(t * 1000)
            frame.time_base = Fraction(1, 1000)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return path


def frame_ids(frames, step=3) -> list[int]:
    """Frame numbers back from ``write_indexed_video`` frames (T, C, H, W)."""
    return [int(round(float(f.float().mean()) / step)) for f in frames]


def write_audio(path, tracks: dict, sample_rate=44100, layout="mono", codec="flac", video=False):
    """Audio file (or mkv with a tiny video) with one stream per ``{language: float (N,) or (2, N)}``."""
    with av.open(str(path), "w") as out:
        vstream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
        streams = {}
        for lang, _ in tracks.items():
            s = out.add_stream(codec, rate=sample_rate, layout=layout)
            if lang:
                s.metadata["language"] = lang
            streams[lang] = s
        for lang, wave in tracks.items():
            pcm = np.atleast_2d((np.clip(wave, -1, 1) * 32767).astype(np.int16))
            if layout == "stereo":
                pcm = pcm.T.reshape(1, -1)  # packed s16
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = 0
            for p in streams[lang].encode(frame):
                out.mux(p)
            for p in streams[lang].encode(None):
                out.mux(p)
        if vstream is not None:
            n = int(len(np.atleast_2d(next(iter(tracks.values())))[0]) / sample_rate * 25)
            for k in range(n):
                for p in vstream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                    out.mux(p)
            for p in vstream.encode(None):
                out.mux(p)
    return path


def tone(freq, seconds, sample_rate, amp=0.5):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(wave: np.ndarray, sample_rate: int) -> float:
    spec = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spec) * sample_rate / len(wave))
