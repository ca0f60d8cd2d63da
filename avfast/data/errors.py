"""``DataError``: one bad file or clip, named with the reason, so a loader can skip it or a user fix it."""
from __future__ import annotations

import contextlib
import os

__all__ = ["DataError"]


class DataError(RuntimeError):
    """A clip or file that cannot be used: ``DataError(path, reason)``; ``str()`` is ``"path: reason"``."""

    def __init__(self, path, reason: str):
        self.path = os.fspath(path) if path is not None else "<unknown>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


@contextlib.contextmanager
def decoding(path, what: str = "decoding"):
    """Turn FFmpeg/PyAV errors raised inside the block into a ``DataError`` naming ``path``."""
    import av

    try:
        yield
    except DataError:
        raise
    except (av.error.FFmpegError, EOFError, ValueError, IndexError) as exc:
        raise DataError(path, f"{what} failed (corrupt, truncated or unsupported file): {exc}") from exc


def open_media(path, kind: str):
    """``av.open(path)`` with a ``DataError`` for a missing, empty or unreadable file."""
    import av

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        return av.open(path)
    except av.error.FFmpegError as exc:
        raise DataError(path, f"cannot open as {kind} (corrupt or not a media file): {exc}") from exc
