"""A dependency-free progress line and the JSON-lines / TensorBoard metrics log."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ProgressBar", "MetricsLog"]


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """``epoch e/E step s/S [####....] loss x clips/s y eta h:mm:ss`` on one line (a TTY) or per update."""

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None, width: int = 24):
        self.total, self.enabled, self.width = max(1, total), enabled, width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()

    def update(self, step: int, *, epoch: int, epochs: int, **values: float) -> None:
        if not self.enabled:
            return
        done = int(self.width * min(step, self.total) / self.total)
        elapsed = time.perf_counter() - self.start
        rate = step / elapsed if elapsed > 0 and step else 0.0
        eta = (self.total - step) / rate if rate else 0.0
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = (f"epoch {epoch + 1}/{epochs} step {step}/{self.total} [{'#' * done}{'.' * (self.width - done)}] "
                f"{text} eta {_clock(eta)}")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Appends one JSON object per call to ``path`` (and scalars to TensorBoard when installed)."""

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(tensorboard_dir))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
