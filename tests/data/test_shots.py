"""Shot-boundary detection recovers the demo movies' cuts; the 3-12 s filter; manifest building."""
import pytest

from avfast.data import build_manifest, detect_shots, keep_shots, read_manifest


@pytest.mark.parametrize("method", ["histogram", "pixel"])
def test_detects_the_generated_cuts(demo, method):
    clips = [c for c in read_manifest(demo) if c.source == "m000"]
    shots = detect_shots(clips[0].video, method=method)
    assert len(shots) == len(clips)
    for (a, b), clip in zip(shots, clips):
        assert abs(a - clip.start) < 0.05 and abs(b - clip.end) < 0.05


def test_keep_shots_filter():
    shots = [(0.0, 2.9), (2.9, 6.0), (6.0, 18.5), (18.5, 30.5)]
    assert keep_shots(shots) == [(2.9, 6.0), (18.5, 30.5)]
    assert keep_shots(shots, min_len=1.0, max_len=4.0) == [(0.0, 2.9), (2.9, 6.0)]


def test_build_manifest_from_movies(demo, tmp_path):
    truth = read_manifest(demo)
    videos = sorted({c.video for c in truth})
    out = tmp_path / "shots.jsonl"
    clips = build_manifest(videos, out)
    again = read_manifest(out)
    assert len(again) == len(clips) == len(truth)
    assert again[0].audio == {lang: i for i, lang in enumerate(truth[0].languages)}  # embedded tracks by language
    assert again[0].source == "m000"
    # a threshold nothing reaches gives one shot per movie, which the 3-12 s filter drops
    assert build_manifest(videos[:1], tmp_path / "none.jsonl", threshold=2.0, max_len=5.0) == []


def test_cli_shots(demo, tmp_path, capsys):
    from avfast.cli import main

    video = read_manifest(demo)[0].video
    assert main(["shots", video, "-o", str(tmp_path / "m.jsonl"), "--method", "pixel"]) == 0
    assert "wrote 2 shots" in capsys.readouterr().out
