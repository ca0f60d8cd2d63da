"""The manifest: JSON lines, one clip (a shot) per line.

A line::

    {"video": "movies/m000.mp4", "audio": {"en": "movies/m000.en.flac", "es": 1},
     "source": "m000", "start": 12.0, "end": 16.4, "primary": "en",
     "separated": "movies/m000.sep.flac", "labels": {...}}

``audio`` maps a language tag to a sidecar file (path) or to an audio stream of the video file
(an int: index among its audio streams). Relative paths are relative to the manifest's folder.
``primary`` (the original language) defaults to the first key of ``audio``; ``separated`` (a
speech-free background track, for the no-speech variant) and ``labels`` are optional.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from avfast.data.errors import DataError

__all__ = ["Clip", "read_manifest", "write_manifest"]


@dataclass
class Clip:
    """One manifest line (paths as written; ``resolve`` makes them absolute)."""

    video: str
    audio: dict
    source: str
    start: float
    end: float
    primary: str | None = None
    separated: str | None = None
    labels: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.primary is None and self.audio:
            self.primary = next(iter(self.audio))

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def languages(self) -> list[str]:
        return list(self.audio)

    def resolve(self, root) -> "Clip":
        """A copy whose relative file paths are joined to ``root``."""
        def join(p):
            return p if p is None or isinstance(p, int) or os.path.isabs(p) else os.path.join(root, p)

        return Clip(video=join(self.video), audio={k: join(v) for k, v in self.audio.items()}, source=self.source,
                    start=self.start, end=self.end, primary=self.primary, separated=join(self.separated),
                    labels=dict(self.labels))

    def audio_source(self, language: str):
        """``(path, track)`` for ``load_audio``: a sidecar file, or the video with a stream index."""
        if language not in self.audio:
            raise DataError(self.video, f"no audio track in language {language!r}; tracks: {self.languages}")
        where = self.audio[language]
        return (self.video, where) if isinstance(where, int) else (where, None)


def _parse(line: str, where: str) -> Clip:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(where, f"invalid JSON: {exc}") from exc
    missing = [k for k in ("video", "source", "start", "end") if k not in raw]
    if missing:
        raise DataError(where, f"missing field(s) {missing}")
    audio = raw.get("audio") or {}
    if not isinstance(audio, dict):
        raise DataError(where, "'audio' must map language -> path or stream index")
    unknown = set(raw) - {"video", "audio", "source", "start", "end", "primary", "separated", "labels"}
    if unknown:
        raise DataError(where, f"unknown field(s) {sorted(unknown)}")
    clip = Clip(video=raw["video"], audio=audio, source=str(raw["source"]), start=float(raw["start"]),
                end=float(raw["end"]), primary=raw.get("primary"), separated=raw.get("separated"),
                labels=raw.get("labels") or {})
    if not clip.end > clip.start >= 0:
        raise DataError(where, f"need 0 <= start < end ({clip.start}, {clip.end} given)")
    if clip.primary is not None and clip.audio and clip.primary not in clip.audio:
        raise DataError(where, f"primary language {clip.primary!r} has no track in 'audio'")
    return clip


def read_manifest(path, resolve: bool = True) -> list[Clip]:
    """Clips of a JSON-lines manifest (blank lines and ``#`` comments skipped); relative paths
    resolved against the manifest's folder when ``resolve``. Bad lines raise ``DataError`` with the line number."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "manifest does not exist")
    root = path.resolve().parent
    clips = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            clip = _parse(line, f"{path}:{no}")
            clips.append(clip.resolve(root) if resolve else clip)
    if not clips:
        raise DataError(path, "manifest has no clips")
    return clips


def write_manifest(path, clips: Iterable[Clip]) -> Path:
    """Write clips as JSON lines (atomically: temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for clip in clips:
            row = asdict(clip) if isinstance(clip, Clip) else dict(clip)
            row = {k: v for k, v in row.items() if v not in (None, {}) or k == "audio"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
