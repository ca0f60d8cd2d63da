"""Separation for the no-speech variant: the stems plug-in interface (stand-in model) and `avfast separate`."""
import json

import numpy as np
import pytest
import torch

from avfast.data import read_manifest
from avfast.data.dubbing import _plugin, register_plugin
from avfast.data.separation import separate_manifest, stems_background


class StandIn:
    """Demucs' interface: stereo in at 44.1 kHz, stems out; 'vocals' is a quarter of the mix."""

    samplerate = 44100

    def __init__(self):
        self.calls = []

    def separate_tensor(self, x, rate):
        assert x.dim() == 2 and x.shape[0] == 2 and rate == 44100
        self.calls.append(tuple(x.shape))
        return x, {"vocals": 0.25 * x, "drums": 0.5 * x, "other": 0.25 * x}


@pytest.mark.parametrize("channels,rate,n", [(1, 48000, 48001), (2, 48000, 24007), (2, 44100, 4410), (1, 16000, 999)])
def test_stems_background_keeps_shape_and_removes_vocals(channels, rate, n):
    t = np.arange(n) / rate
    wave = np.stack([np.sin(2 * np.pi * 220 * t + c) for c in range(channels)]).astype(np.float32) * 0.5
    model = StandIn()
    bg = stems_background(model, wave, rate)
    assert bg.shape == wave.shape and bg.dtype == np.float32  # samples, not channels, are trimmed
    inner = slice(n // 10, -n // 10)  # resampling edges aside
    np.testing.assert_allclose(bg[:, inner], 0.75 * wave[:, inner], atol=2e-2)
    assert model.calls[0][1] == pytest.approx(n * 44100 / rate, abs=1)
    with pytest.raises(ValueError, match="1 or 2"):
        stems_background(model, np.zeros((3, 10), np.float32), rate)


def test_demucs_plugin_errors_clearly_without_weights(monkeypatch):
    monkeypatch.delenv("AVFAST_DEMUCS_REPO", raising=False)
    with pytest.raises((ImportError, FileNotFoundError), match="demucs"):
        _plugin("separator", "demucs")


def test_separate_manifest_writes_tracks_updates_manifest_and_resumes(demo, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo.parent, root)
    manifest = root / demo.name
    model = StandIn()
    register_plugin("separator", "standin", lambda: lambda w, r: stems_background(model, w, r))
    report = separate_manifest(manifest, separator="standin", log=lambda *_: None)
    clips = read_manifest(manifest)
    assert report["written"] == report["tracks"] == len({(c.audio_source(c.primary)) for c in clips}) > 0
    for c in clips:
        assert c.separated and c.separated.endswith(".sep.flac")
    raw = [json.loads(line) for line in open(manifest)]
    assert all(not r["separated"].startswith("/") for r in raw)  # relative to the manifest
    assert not list((root / "separated").glob("*.tmp.flac"))
    from avfast.data import load_audio

    sep = load_audio(clips[0].separated, 44100, 0.0, 1.0)
    orig = load_audio(*clips[0].audio_source(clips[0].primary)[:1], 44100, 0.0, 1.0,
                      track=clips[0].audio_source(clips[0].primary)[1])
    assert sep.shape[-1] == 44100
    np.testing.assert_allclose(sep.mean(0)[4410:-4410], 0.75 * orig.mean(0)[4410:-4410], atol=3e-2)
    # resumable: a second run separates nothing (and needs no separator)
    again = separate_manifest(manifest, separator="no-such-plugin", log=lambda *_: None)
    assert again["written"] == 0 and again["skipped"] == report["tracks"]


def test_cli_separate_reports_missing_weights(demo, capsys, monkeypatch):
    from avfast.cli import main

    monkeypatch.delenv("AVFAST_DEMUCS_REPO", raising=False)
    import shutil, tempfile  # noqa: E401

    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(demo.parent, d, dirs_exist_ok=True)
        assert main(["separate", f"{d}/{demo.name}"]) == 1
    assert "demucs" in capsys.readouterr().err
