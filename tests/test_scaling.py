"""benchmarks/scaling.py: a tiny run writes JSON rows (with versions, device, date, commit) and a PNG;
a point predicted to pass --max-point-s is saved as a skipped row with the reason."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_mel_curve_writes_rows_and_png_and_skips_a_too_long_point(tmp_path):
    pytest.importorskip("matplotlib")
    p = subprocess.run([sys.executable, "benchmarks/scaling.py", "--quick", "--curves", "mel", "--threads", "1",
                        "--reps", "1", "--budget-s", "0.1", "--max-point-s", "1e-9", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = json.loads((tmp_path / "mel.json").read_text())
    assert [(r["batch"], r["provider"]) for r in rows] == [
        (1, "avfast mel_spectrogram"), (1, "torch.stft chain (reference)"),
        (4, "avfast mel_spectrogram"), (4, "torch.stft chain (reference)")]
    for r in rows:
        assert {"date", "commit", "torch", "device", "threads"} <= r.keys()
    measured, skipped = rows[:2], rows[2:]
    assert all(r["time_s"] > 0 and r["op_peak_bytes"] >= 0 and r["peak_bytes"] > 0 for r in measured)
    assert all(r["time_s"] is None and "passes --max-point-s" in r["skipped"] for r in skipped)
    png = (tmp_path / "mel.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
