"""Audio decoding: ``load_audio(path, sample_rate, start, duration, track, channels) -> float32 (C, T)``.

PyAV decodes audio streams inside video containers (mp4, mkv, ...) and sidecar files (FLAC, WAV,
...), picks a track by index or language tag, resamples with FFmpeg's resampler, and cuts the
interval by timestamps, so ``load_audio(p, sr, start, d)`` covers the same interval as
``PyAVVideoReader().read(p, start, d)``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from avfast.data.errors import DataError, decoding, open_media

__all__ = ["load_audio", "save_audio", "audio_tracks", "normalize_language", "iso639_2"]

# ISO 639-1 <-> 639-2/B/T codes of common dub languages; containers store 639-2 ("eng").
_LANG_ALIASES = {
    "en": ("eng",), "es": ("spa",), "fr": ("fra", "fre"), "ja": ("jpn",), "de": ("deu", "ger"),
    "it": ("ita",), "pt": ("por",), "zh": ("zho", "chi"), "ko": ("kor",), "ru": ("rus",), "hi": ("hin",),
    "ar": ("ara",), "nl": ("nld", "dut"), "pl": ("pol",), "tr": ("tur",), "sv": ("swe",), "cs": ("ces", "cze"),
}
_TO_SHORT = {long: short for short, longs in _LANG_ALIASES.items() for long in longs}


def iso639_2(tag: str) -> str:
    """The three-letter code containers store (``"es"`` -> ``"spa"``); unknown tags pass through."""
    short = normalize_language(tag) or "und"
    return _LANG_ALIASES.get(short, (short,))[0]


def normalize_language(tag: str | None) -> str | None:
    """A language tag in canonical short form: ``"eng"``, ``"en-US"``, ``"EN"`` -> ``"en"``."""
    if not tag:
        return None
    base = tag.strip().lower().replace("_", "-").split("-")[0]
    return _TO_SHORT.get(base, base)


def audio_tracks(path) -> list[dict]:
    """The audio streams of ``path``: ``[{"index", "language", "sample_rate", "channels", "codec"}]``."""
    with open_media(path, "audio") as container:
        return [_describe(i, s) for i, s in enumerate(container.streams.audio)]


def _describe(i: int, stream) -> dict:
    return {"index": i, "language": normalize_language(stream.metadata.get("language") or stream.language),
            "sample_rate": stream.codec_context.sample_rate, "channels": stream.codec_context.channels,
            "codec": stream.codec_context.name}


def _pick_stream(container, path: str, track):
    streams = list(container.streams.audio)
    if not streams:
        raise DataError(path, "no audio stream")
    if any(s.codec_context is None for s in (streams if track is not None else streams[:1])):
        raise DataError(path, "unsupported audio codec (this FFmpeg build has no decoder for a stream)")
    if track is None:
        return streams[0]
    if isinstance(track, (int, np.integer)):
        if not 0 <= track < len(streams):
            raise DataError(path, f"audio track {track} requested but the file has {len(streams)} audio stream(s)")
        return streams[track]
    want = normalize_language(str(track))
    found = [_describe(i, s)["language"] for i, s in enumerate(streams)]
    for stream, lang in zip(streams, found):
        if lang == want:
            return stream
    if len(streams) == 1 and found[0] in (None, "und"):
        return streams[0]  # an untagged single-track sidecar file (e.g. movie.es.flac)
    raise DataError(path, f"no audio track in language {track!r}; tracks: {found}")


def load_audio(path, sample_rate: int, start: float = 0.0, duration: float | None = None, track=None,
               channels: int | None = None, max_pad: float = 0.25) -> torch.Tensor:
    """Decode ``[start, start + duration)`` seconds of one audio track: float32 (C, T) in [-1, 1].

    .. devices:: CPU

    Args:
        path: a video container with audio streams or an audio file.
        sample_rate: output rate; FFmpeg's resampler converts from the stream's rate.
        start, duration: interval in seconds (presentation time); ``duration=None`` reads to the end.
            The output has exactly ``round(duration * sample_rate)`` samples.
        track: None (first audio stream), an index among the audio streams, or a language tag
            (``"en"``, ``"eng"``, ``"en-US"`` all match a stream tagged ``eng``).
        channels: None keeps the stream's (more than 2 are mixed down to stereo); 1 mixes down to
            mono; 2 keeps stereo and duplicates mono into pseudo-stereo.
        max_pad: seconds of silence allowed at the end when the stream stops slightly early; a
            larger shortfall is an error (truncated file or clip past the end).

    Raises ``DataError`` naming the file for missing/empty/corrupt files, no audio stream, an
    unknown track or language, and intervals past the end of the stream.
    """
    import av

    path = os.fspath(path)
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be an int > 0 ({sample_rate!r} given)")
    if channels not in (None, 1, 2):
        raise ValueError(f"channels must be None, 1 or 2 ({channels} given)")
    if not (start >= 0 and math.isfinite(start)) or (duration is not None and not (duration > 0 and math.isfinite(duration))):
        raise ValueError(f"need start >= 0 and duration > 0, both finite ({start}, {duration} given)")
    with open_media(path, "audio") as container:
        stream = _pick_stream(container, path, track)
        src_channels = stream.codec_context.channels or 1
        layout = "mono" if (channels == 1 or src_channels == 1) else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        with decoding(path, "audio decoding"):
            wave, first_time = _decode_span(container, stream, resampler, start, duration, sample_rate)
    offset = round((start - first_time) * sample_rate)
    wave = wave[:, max(offset, 0):]
    if offset < 0:  # the stream starts after `start`: the gap is silence
        wave = np.concatenate([np.zeros((wave.shape[0], -offset), np.float32), wave], axis=1)
    if duration is not None:
        want = round(duration * sample_rate)
        short = want - wave.shape[1]
        if short > max_pad * sample_rate:
            end = start + wave.shape[1] / sample_rate
            raise DataError(path, f"audio ends at {end:.3f} s but the clip needs [{start:.3f}, {start + duration:.3f}) s")
        wave = np.pad(wave, ((0, 0), (0, max(short, 0))))[:, :want]
    elif wave.shape[1] == 0:
        raise DataError(path, f"no audio after {start:.3f} s")
    if channels == 2 and wave.shape[0] == 1:
        wave = np.repeat(wave, 2, axis=0)
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def _decode_span(container, stream, resampler, start: float, duration: float | None, sample_rate: int):
    """Resampled planar float (C, N) from the first decoded frame at/before ``start``, and that frame's time."""
    if start > 0 and stream.time_base is not None:
        container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
    stop = None if duration is None else start + duration
    chunks, first_time = [], None
    for frame in container.decode(stream):
        if first_time is None:
            first_time = float(frame.time) if frame.time is not None else 0.0
            if first_time > start and start > 0:
                # seek landed after `start` (coarse index): restart from the beginning
                container.seek(0, stream=stream, backward=True)
                first_time = None
                start = -1.0  # seek only once
                continue
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray())
        if stop is not None and frame.time is not None and frame.time > stop:
            break
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    if first_time is None:
        raise DataError(container.name, "no decodable audio in the requested interval")
    wave = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
    return wave, first_time


def save_audio(path, wave, sample_rate: int, language: str | None = None, codec: str = "flac") -> str:
    """Write float (C, N) or (N,) in [-1, 1] (tensor or array) as 16-bit audio (FLAC by default),
    language-tagged when ``language`` is given. Returns the path."""
    import av

    wave = np.atleast_2d(wave.numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave))
    if wave.shape[0] not in (1, 2):
        raise ValueError(f"wave must be (1 or 2, N) ({wave.shape} given)")
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    path = os.fspath(path)
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        if language:
            stream.metadata["language"] = iso639_2(language)
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)  # packed s16
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout=layout)
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path
