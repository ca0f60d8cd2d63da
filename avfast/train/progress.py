"""Progress for long jobs (a tqdm bar on a terminal, plain log lines otherwise) and the metrics log."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

__all__ = ["ProgressBar", "MetricsLog", "track", "is_main_process"]

T = TypeVar("T")


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def is_main_process() -> bool:
    """False on every torchrun worker but rank 0 (``RANK`` unset counts as the main process)."""
    return os.environ.get("RANK", "0") in ("", "0")


def _is_tty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressBar:
    """Training progress: ``epoch e/E`` with step s/S, loss, clips/s and the ETA.

    On a terminal a tqdm bar redrawn in place; in a pipe or a log file one plain line per ``update``.
    Only rank 0 of a torchrun job draws (``enabled`` is also and-ed with that).
    """

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None, width: int = 24):
        self.total = max(1, total)
        self.enabled = enabled and is_main_process()
        self.stream = stream or sys.stderr
        self.tty = _is_tty(self.stream)
        self.start = time.perf_counter()
        self.bar = None
        if self.enabled and self.tty:
            self.bar = tqdm(total=self.total, file=self.stream, unit="step", dynamic_ncols=True, leave=True)

    def update(self, step: int, *, epoch: int, epochs: int, **values: float) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(min(step, self.total) - self.bar.n)
            return
        elapsed = time.perf_counter() - self.start
        rate = step / elapsed if elapsed > 0 and step else 0.0
        eta = (self.total - step) / rate if rate else 0.0
        self.stream.write(f"epoch {epoch + 1}/{epochs} step {step}/{self.total} {text} eta {_clock(eta)}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", *, enabled: bool = True,
          stream: TextIO | None = None, unit: str = "it", log_every: float = 10.0) -> Iterator[T]:
    """Yields ``iterable``'s items while showing progress: a tqdm bar on a terminal; otherwise a log line
    ``desc: i/total (rate unit/s, eta h:mm:ss)`` at most every ``log_every`` seconds and at the end.

    ``total`` defaults to ``len(iterable)`` when it has one. Silent on torchrun ranks other than 0.
    """
    stream = stream or sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not (enabled and is_main_process()):
        yield from iterable
        return
    if _is_tty(stream):
        yield from tqdm(iterable, total=total, desc=desc, file=stream, unit=unit, dynamic_ncols=True)
        return
    start = last = time.perf_counter()
    n = 0
    for item in iterable:
        yield item
        n += 1
        now = time.perf_counter()
        if now - last >= log_every or (total is not None and n == total):
            last = now
            rate = n / (now - start) if now > start else 0.0
            of = f"/{total}" if total is not None else ""
            eta = f", eta {_clock((total - n) / rate)}" if total is not None and rate else ""
            stream.write(f"{desc}: {n}{of} ({rate:.3g} {unit}/s{eta})\n")
            stream.flush()


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
