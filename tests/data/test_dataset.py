"""QuadrupleDataset + build_loader on the demo data: shapes, variants, determinism, batches, skipping bad clips."""
import logging
import shutil

import pytest
import torch

from avfast.data import DataConfig, QuadrupleDataset, build_loader, read_manifest

WAVE = DataConfig.demo(audio="wave")


def test_item_with_mel_features(demo):
    ds = QuadrupleDataset(demo, "multilingual", DataConfig.demo())
    item = ds[(0, 0, 0)]
    assert item["video"].shape == item["video_s"].shape == (3, 8, 112, 112)
    assert item["video"].dtype == torch.float32 and abs(float(item["video"].mean())) < 3
    assert item["audio"].shape == item["audio_s"].shape == (2, 96, 96)  # 1 s at 48 kHz, hop 501, 96 mels
    assert item["lang"] == "en" and item["lang_s"] != "en" and item["skipped"] == 0
    assert item["source"] == ds.source_ids[0] and item["clip"] == 0


def test_item_is_deterministic_and_varies_with_epoch(demo):
    ds = QuadrupleDataset(demo, "monolingual", WAVE)
    a, b, c = ds[(1, 0, 3)], ds[(1, 0, 3)], ds[(1, 1, 3)]
    assert a["audio"].shape == (2, 48000)
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio_s"], b["audio_s"])
    assert not torch.equal(a["video"], c["video"])
    assert a["lang_s"] == "en"
    ev = QuadrupleDataset(demo, "monolingual", WAVE, train=False)
    assert torch.equal(ev[(1, 0, 0)]["video"], ev[(1, 5, 9)]["video"])  # evaluation ignores epoch/step


def test_no_speech_and_audio_only(demo):
    ns = QuadrupleDataset(demo, "no_speech", WAVE)[2]
    assert set(ns) == {"video", "audio", "source", "clip", "lang", "lang_s", "skipped"} and ns["lang"] == "separated"
    ao = QuadrupleDataset(demo, "audio_only", WAVE)[2]
    assert "video" not in ao and "video_s" not in ao and ao["audio_s"].shape == (2, 48000)


def test_loader_batches(demo):
    ds = QuadrupleDataset(demo, "multilingual:es,fr,ja", WAVE)
    loader = build_loader(ds, batch_size=2, same_source_fraction=1.0, num_workers=0)
    loader.batch_sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    for step, batch in enumerate(batches):
        assert batch["video"].shape == (2, 3, 8, 112, 112) and batch["audio"].shape == (2, 2, 48000)
        assert batch["source"][0] == batch["source"][1]  # fraction 1: the whole batch from one movie
        assert len(set(batch["lang_s"])) == 1  # one dub language per batch (round-robin)
    state = loader.batch_sampler.state_dict(batches_done=1)
    assert state["segments"] == [[1, 2, 1]]


def test_loader_with_workers(demo):
    ds = QuadrupleDataset(demo, "monolingual", WAVE)
    loader = build_loader(ds, batch_size=3, num_workers=2, pin_memory=False, persistent_workers=False)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 8, 112, 112) and batch["audio_s"].shape == (3, 2, 48000)


def test_skip_bad_clips_keeps_batch_size(demo, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(demo.parent, root)
    (root / "movies" / "m001.mp4").write_bytes(b"not a video at all" * 100)  # corrupt one movie's video
    clips = read_manifest(root / "manifest.jsonl")
    bad = [i for i, c in enumerate(clips) if c.source == "m001"]
    ds = QuadrupleDataset(clips, "monolingual", WAVE, on_error="skip")
    loader = build_loader(ds, batch_size=3, num_workers=0, same_source_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="avfast.data"):
        batches = list(loader)
    assert all(b["video"].shape[0] == 3 for b in batches)
    assert not set(int(c) for b in batches for c in b["clip"]) & set(bad)
    assert sum(int(b["skipped"].sum()) for b in batches) >= len(bad)
    assert ds.num_skipped == len(bad)  # each bad clip is tried once, then remembered
    logged = [r for r in caplog.records if "m001.mp4" in r.getMessage()]
    assert len(logged) == 1 and "cannot open as video" in logged[0].getMessage()
    strict = QuadrupleDataset(clips, "monolingual", WAVE)
    with pytest.raises(Exception, match="m001.mp4"):
        strict[bad[0]]
