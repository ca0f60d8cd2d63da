"""Checkpoints: atomic saves, `latest` survives interrupted saves, corrupt files raise clearly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from avfast.train import checkpoint as ckpt
from avfast.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "trainer": {"step": int(value)}}


def test_round_trip_and_latest(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1.0))
    save_checkpoint(tmp_path, 2, _state(2.0))
    assert latest_checkpoint(tmp_path).name == "ckpt_00000002.pt"
    state = load_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.full((64, 64), 2.0))
    assert load_checkpoint(tmp_path / "ckpt_00000001.pt")["trainer"]["step"] == 1


def test_keep_prunes_old_checkpoints(tmp_path):
    for step in range(5):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_00000003.pt", "ckpt_00000004.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "truncate_no_digest"])
def test_corrupt_checkpoint_raises_a_clear_error(tmp_path, damage):
    path = save_checkpoint(tmp_path, 3, _state(3.0))
    data = bytearray(path.read_bytes())
    if damage.startswith("truncate"):
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if damage == "truncate_no_digest":
        path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(CheckpointError, match="ckpt_00000003.pt"):
        load_checkpoint(tmp_path)


def test_missing_and_unsafe_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format_version": 1, "obj": _Pickled()}, unsafe)  # needs arbitrary unpickling
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(unsafe)


class _Pickled:
    pass


def test_interrupted_save_keeps_the_previous_latest(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _state(1.0))
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(100)  # half-written file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _state(2.0))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert not (tmp_path / "ckpt_00000002.pt").exists()
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_killed_process_never_leaves_a_broken_latest(tmp_path):
    code = textwrap.dedent(f"""
        import torch
        from avfast.train.checkpoint import save_checkpoint
        step = 0
        while True:
            step += 1
            save_checkpoint({str(tmp_path)!r}, step, {{"w": torch.full((512, 1024), float(step))}}, keep=2)
            print(step, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # let a few saves complete, then kill in the middle of the next ones
            assert proc.stdout.readline(), "saver died"
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(tmp_path)
    assert state["step"] >= 3 and torch.equal(state["w"], torch.full((512, 1024), float(state["step"])))
