"""Progress: a tqdm bar on a (pseudo-)terminal, plain log lines in a pipe, nothing on other torchrun ranks."""
import fcntl
import io
import os
import pty
import struct
import termios
import subprocess
import sys

import pytest

from avfast.train.progress import ProgressBar, track

SCRIPT = """
import sys, time
from avfast.train.progress import ProgressBar, track
bar = ProgressBar(4)
for s in range(1, 5):
    bar.update(s, epoch=0, epochs=2, loss=0.5, **{"clips/s": 12.0})
bar.close()
print(sum(track(range(3), desc="decode", log_every=0.0)), file=sys.stderr)
"""


def _run(use_pty: bool, env_extra=None) -> str:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("RANK", None) if not env_extra else None
    if not use_pty:
        p = subprocess.run([sys.executable, "-c", SCRIPT], stderr=subprocess.PIPE, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stderr
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))   # a 160-column terminal
    p = subprocess.Popen([sys.executable, "-c", SCRIPT], stderr=child, stdout=child, env=env)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:   # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(timeout=120) == 0, out
    os.close(main)
    return out.decode(errors="replace")


def test_bar_on_a_terminal():
    out = _run(use_pty=True)
    assert "\r" in out, "a terminal gets a bar redrawn in place"
    assert "epoch 1/2" in out and "loss 0.5" in out and "4/4" in out and "100%" in out
    assert "decode" in out and "3/3" in out


def test_log_lines_in_a_pipe():
    out = _run(use_pty=False)
    assert "\r" not in out and "%|" not in out, "no bar drawing codes in a pipe"
    lines = out.strip().splitlines()
    assert lines[:4] == [f"epoch 1/2 step {s}/4 loss 0.5 clips/s 12 eta {lines[s - 1].split()[-1]}" for s in range(1, 5)]
    assert "decode: 3/3" in out and lines[-1] == "3"


def test_only_rank_zero_draws():
    out = _run(use_pty=False, env_extra={"RANK": "1"})
    assert out.strip().splitlines() == ["3"], "rank 1 prints neither bar nor log lines, and track still yields"


def test_disabled_and_track_total():
    stream = io.StringIO()
    bar = ProgressBar(3, enabled=False, stream=stream)
    bar.update(1, epoch=0, epochs=1, loss=1.0)
    bar.close()
    assert stream.getvalue() == ""
    items = list(track(iter([1, 2]), total=2, desc="x", stream=stream, log_every=1e9))
    assert items == [1, 2] and stream.getvalue() == "x: 2/2 (" + stream.getvalue().split("(", 1)[1]
    assert list(track([5], desc="off", enabled=False, stream=stream)) == [5]


@pytest.mark.parametrize("n", [0, 1])
def test_track_empty_and_single(n):
    stream = io.StringIO()
    assert list(track(range(n), desc="d", stream=stream, log_every=0.0)) == list(range(n))


def test_make_demo_data_reports_progress(tmp_path, capsys):
    from avfast.data.synthetic import make_demo_data

    make_demo_data(tmp_path, num_movies=2, shots_per_movie=1, width=32, height=24, fps=5, sample_rate=8000,
                   voice="synthetic", languages=("en", "es"), progress=True)
    assert "make-demo-data: 2/2" in capsys.readouterr().err   # pytest's stderr is not a terminal: log lines
