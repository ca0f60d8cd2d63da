"""`avfast pretrain` / `avfast eval` end to end on a few demo clips (needs avfast.data)."""
from __future__ import annotations

import json

from pathlib import Path

import pytest

from avfast.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"

SMALL = ["data.batch_size=4", "data.num_workers=0", "data.num_frames=2", "data.crop_size=32",
         "data.short_side=[36, 40]", "optim.epochs=2", "optim.warmup_epochs=1", "train.progress=false",
         "eval.batch_size=8"]


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory):
    from avfast.data import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), num_movies=2, shots_per_movie=3, width=64, height=48,
                          voice="synthetic")


def test_pretrain_resume_and_eval(demo_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(CONFIG), "--data", str(demo_manifest), "--out", str(out)]
    sets = [x for s in SMALL for x in ("--set", s)]
    assert main(args + sets) == 0
    text = capsys.readouterr().out
    assert "retrieval before training" in text and "retrieval after training" in text and "clips/s" in text
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["steps"] == 2  # 6 clips, batch 4: one step per epoch
    r = report["after"]["retrieval"]["video->audio"]
    assert r["queries"] == 6 and 0 <= r["R@1"] <= 100 and r["chance_R@1"] == pytest.approx(100 / 6)
    # resuming a finished run trains nothing more and keeps the step count
    assert main(args + sets + ["--resume", "--no-eval"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--data", str(demo_manifest), "--json", str(tmp_path / "e.json"),
                 "--probe", str(demo_manifest), "--set", "eval.probe_epochs=5", "--set", "eval.probe_mlp_epochs=3",
                 "--set", "eval.probe_label=colour,kind"]) == 0
    results = json.loads((tmp_path / "e.json").read_text())
    assert results["retrieval"]["audio->video"]["queries"] == 6
    assert set(results["probe"]) == {"colour", "kind"}
    probe = results["probe"]["kind"]
    assert set(probe) == {"features", "classes", "video", "audio", "audio+video"} and probe["features"] == "backbone"
    for kind in ("linear", "mlp"):
        assert 0 <= probe["audio"][kind]["top1"] <= 100 and 0 <= probe["audio"][kind]["mean_per_class"] <= 100


def test_skipped_clips_are_counted_with_loader_workers(demo_manifest, tmp_path):
    # Bad clips are replaced inside DataLoader workers; the run's count must still see them.
    from avfast.train.config import load_config
    from avfast.train.data import ManifestSource

    lines = Path(demo_manifest).read_text().splitlines()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = json.loads(lines[0])
    bad["video"] = str(broken)
    manifest = Path(demo_manifest).parent / "manifest_one_broken.jsonl"  # relative clip paths stay valid
    manifest.write_text("\n".join([json.dumps(bad)] + lines[1:]) + "\n")
    cfg = load_config(str(CONFIG), SMALL + ["data.num_workers=1", "data.on_error=skip"])
    source = ManifestSource(cfg, str(manifest))
    seen = sum(int(b["skipped"].sum()) for b in source.batches(0, 0))
    assert seen > 0 and source.state_dict()["skipped"] == seen
