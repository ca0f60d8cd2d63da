"""VGGSound-style manifest loader on the shipped fixture, its errors, and the synthetic generator."""
import shutil
from pathlib import Path

import pytest
import torch

from avfast.data import DataError
from avfast.data.vggsound import SyntheticEvents, VGGSoundDataset, collate_events, read_vggsound_csv

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vggsound"


def test_fixture_reads():
    rows, names = read_vggsound_csv(FIXTURE / "vggsound.csv")
    multi = [r for r in rows if len(r["labels"]) > 1]
    assert multi, "the fixture holds a multi-label clip"
    ds = VGGSoundDataset(FIXTURE, "train", seconds=1.0, fps=10, size=32)
    item = ds[0]
    assert item["wave"].shape == (16000,) and item["wave"].dtype == torch.float32
    assert item["frames"].shape == (3, 10, 32, 32) and item["frames"].dtype == torch.uint8
    assert item["labels"].sum() == len(ds.clips[0]["labels"]) and len(item["labels"]) == len(names)
    assert len(item["boxes"]) == 1 and all(0 <= v <= 1 for v in item["boxes"][0])
    batch = collate_events([ds[i] for i in range(len(ds))])
    assert batch["wave"].shape[0] == len(ds) and batch["clip"][0] == ds.clips[0]["clip"]
    assert len(VGGSoundDataset(FIXTURE, "test", seconds=1.0, fps=10, size=32)) >= 1


def test_clip_without_audio_names_the_clip(tmp_path):
    root = tmp_path / "vgg"
    shutil.copytree(FIXTURE, root)
    rows, _ = read_vggsound_csv(root / "vggsound.csv")
    clip = rows[0]["clip"]
    silent = FIXTURE.parent / "vggsound_noaudio.mp4"
    shutil.copy(silent, root / "video" / f"{clip}.mp4")
    ds = VGGSoundDataset(root, rows[0]["split"], seconds=1.0, fps=10, size=32)
    with pytest.raises(DataError, match=f"clip {clip} has no audio"):
        ds[[r["clip"] for r in ds.clips].index(clip)]


def test_csv_errors(tmp_path):
    bad = tmp_path / "vggsound.csv"
    bad.write_text("abc,0,dog barking\n")
    with pytest.raises(DataError, match="line 1: expected youtube_id"):
        read_vggsound_csv(bad)
    bad.write_text("abc,0,dog,train\nabc,0,cat,test\n")
    with pytest.raises(DataError, match="abc_000000 is in splits"):
        read_vggsound_csv(bad)
    bad.write_text("abc,0,dog;cat,train\nabc,0,bird,train\n")
    rows, names = read_vggsound_csv(bad)
    assert rows[0]["labels"] == ["dog", "cat", "bird"] and names == ["bird", "cat", "dog"]


def test_synthetic_events_are_tied_to_objects():
    gen = SyntheticEvents(seed=0)
    d = gen.tensors(12, seed=3)
    assert d["wave"].shape == (12, 48000) and d["frames"].shape == (12, 3, 30, 64, 64)
    assert ((d["labels"].sum(1) >= 1) & (d["labels"].sum(1) <= 2)).all()
    assert gen.types == ["onset", "onset", "instant", "instant", "continuous", "continuous"]
    for i in range(12):
        x1, y1, x2, y2 = (d["boxes"][i] * 64).round().long().tolist()
        step = int(d["loc_step"][i])
        inside = d["frames"][i, :, step, y1:y2, x1:x2].float().mean()
        assert inside > d["frames"][i, :, step].float().mean(), i   # the object is shown at its step
    # one event per clip: an instant class sounds once (one loud burst), a continuous one never stops
    single = SyntheticEvents(seed=1, max_events=1).tensors(30, seed=4)
    cls = single["labels"].argmax(1)
    env = single["wave"].abs().unfold(1, 1600, 1600).amax(2)            # (clips, 100 ms steps)
    for i in range(30):
        if cls[i] in (2, 3):
            assert 1 <= int((env[i] > 0.6).sum()) <= 3, i
        if cls[i] in (4, 5):
            assert bool((env[i, 1:-1] > 0.03).all()), i
