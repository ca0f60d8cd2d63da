"""Atomic training checkpoints and RNG state.

Layout of a checkpoint directory::

    ckpt_00000120.pt          torch.save of a dict of tensors / plain Python values
    ckpt_00000120.pt.sha256   hex digest of that file
    latest                    JSON {"file": "ckpt_00000120.pt", "step": 120, "sha256": ...}

A save writes a temporary file, fsyncs it, renames it into place (atomic on POSIX), fsyncs the
directory, and only then replaces ``latest`` the same way. A save interrupted at any point (crash,
kill, full disk) leaves ``latest`` naming the previous complete checkpoint. Loading uses
``torch.load(weights_only=True)`` (no pickle code execution) and checks the digest, so a truncated
or corrupted file raises ``CheckpointError`` naming it instead of resuming from garbage.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state",
           "set_rng_state"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or of an unknown format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temp file next to ``path``, fsync, rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as ``directory/ckpt_<step>.pt`` atomically, then point ``latest`` at it.

    ``state`` holds tensors, numbers, strings, lists and dicts (what ``weights_only`` loading
    accepts). Keeps the newest ``keep`` checkpoints (0: keep all). Returns the checkpoint's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp"):  # left by a save that was killed
        stale.unlink(missing_ok=True)
    path = directory / f"ckpt_{step:08d}.pt"
    payload = {"format_version": FORMAT_VERSION, "step": step, **state}
    _atomic_write(path, lambda f: torch.save(payload, f))
    digest = _sha256(path)
    _atomic_write(path.with_name(path.name + ".sha256"), lambda f: f.write(digest.encode()))
    pointer = json.dumps({"file": path.name, "step": step, "sha256": digest}).encode()
    _atomic_write(directory / "latest", lambda f: f.write(pointer))
    if keep > 0:
        old = sorted((p for p in directory.glob("ckpt_*.pt") if _NAME.match(p.name)), key=lambda p: p.name)[:-keep]
        for p in old:
            if p != path:
                p.unlink(missing_ok=True)
                p.with_name(p.name + ".sha256").unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``directory/latest`` names, or None when there is none yet."""
    pointer = Path(directory) / "latest"
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["file"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{pointer} is not a valid pointer file ({exc})") from exc
    return Path(directory) / name


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or the ``latest`` one of a directory; verify its digest.

    Raises ``CheckpointError`` (naming the file and the problem) when it is missing, truncated,
    corrupt, of another format version, or would need unpickling arbitrary code.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path} (no 'latest' file)")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    digest_file = path.with_name(path.name + ".sha256")
    if digest_file.exists():
        expected = digest_file.read_text().strip()
        actual = _sha256(path)
        if actual != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {actual[:12]}... does not match "
                                  f"the recorded {expected[:12]}... (truncated or modified file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, unpickling and I/O errors all mean "unusable"
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {version!r}; this avfast reads {FORMAT_VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states, as ``weights_only``-loadable values."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
