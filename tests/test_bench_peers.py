"""The peer benchmarks skip, with the package to install as the reason, when the peers are missing."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDE = """
import sys
class _Hide:
    names = {"faiss", "nnAudio", "open_clip", "librosa", "decord", "torchcodec"}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None
sys.meta_path.insert(0, _Hide())
"""


def test_peer_benchmarks_skip_without_their_packages(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               AVFAST_BENCH_QUICK="1")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--benchmark-disable",
                        "benchmarks/bench_peers.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "failed" not in out and " error" not in out.lower(), out
    assert "13 skipped" in out, out   # every row with a peer; the avfast-only mel and decode rows still run
    for reason in ("faiss-cpu not installed", "nnAudio not installed", "open_clip_torch not installed",
                   "librosa not installed", "decord not installed", "torchcodec not installed"):
        assert reason in out, out
