"""The demo data generator: layout, tracks, determinism, espeak-ng and synthetic voices."""
import numpy as np
import pytest
import torch

from avfast.data import PyAVVideoReader, audio_tracks, load_audio, make_demo_data, probe_video, read_manifest
from avfast.data import synthetic


def test_demo_layout(demo):
    clips = read_manifest(demo)
    assert len(clips) == 6 and len({c.source for c in clips}) == 3
    for clip in clips:
        assert 3.0 <= clip.duration <= 12.0
        assert 2 <= len(clip.languages) <= 4 and clip.primary == "en"
        info = probe_video(clip.video)
        assert info["codec"] == "h264" and info["fps"] == 25.0
    first = clips[0]
    tracks = audio_tracks(first.video)
    assert [t["language"] for t in tracks] == first.languages
    lang = first.languages[1]
    inside = load_audio(first.video, 48000, 1.0, 1.0, track=lang)
    sidecar = load_audio(first.audio[lang], 48000, 1.0, 1.0)
    assert torch.equal(inside, sidecar)  # the same FLAC samples, muxed and sidecar


def test_dub_tracks_share_background_and_differ_in_speech(demo):
    clip = read_manifest(demo)[0]
    sep = load_audio(clip.separated, 48000, clip.start, clip.duration)[0]
    a, b = (load_audio(clip.audio[lang], 48000, clip.start, clip.duration)[0] for lang in clip.languages[:2])
    lead = int(0.35 * 48000)  # before the speech slot the tracks are the background only
    assert torch.allclose(a[:lead], sep[:lead], atol=1e-4) and torch.allclose(b[:lead], sep[:lead], atol=1e-4)
    assert float((a - b).abs().max()) > 0.1


def _tiny(out, **kw):
    return make_demo_data(out, num_movies=1, shots_per_movie=1, shot_seconds=(3.1, 3.2), width=64, height=48,
                          sample_rate=16000, **kw)


def test_deterministic_per_seed(tmp_path):
    m1 = _tiny(tmp_path / "a", voice="synthetic", seed=3)
    m2 = _tiny(tmp_path / "b", voice="synthetic", seed=3)
    m3 = _tiny(tmp_path / "c", voice="synthetic", seed=4)
    assert m1.read_text() == m2.read_text()
    c1, c2, c3 = (read_manifest(m)[0] for m in (m1, m2, m3))
    r = PyAVVideoReader()
    assert torch.equal(r.read(c1.video, 0, 3.0, 8), r.read(c2.video, 0, 3.0, 8))
    assert not torch.equal(r.read(c1.video, 0, 3.0, 8), r.read(c3.video, 0, 3.0, 8))
    assert torch.equal(load_audio(c1.audio["en"], 16000), load_audio(c2.audio["en"], 16000))


@pytest.mark.skipif(not synthetic.espeak_available(), reason="espeak-ng not installed")
def test_espeak_voice(tmp_path):
    clip = read_manifest(_tiny(tmp_path, voice="espeak", min_languages=4))[0]
    assert clip.languages == ["en", "es", "fr", "ja"]
    speech = [load_audio(clip.audio[lang], 16000)[0] - load_audio(clip.separated, 16000)[0] for lang in clip.languages]
    for s in speech:
        assert float(s.abs().max()) > 0.2
    assert float((speech[0] - speech[1]).abs().mean()) > 0.01


def test_espeak_requested_but_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="espeak-ng is not installed"):
        _tiny(tmp_path, voice="espeak")
    clip = read_manifest(_tiny(tmp_path, voice="auto"))[0]  # falls back to the synthetic voice
    assert len(clip.languages) >= 2


def test_synthetic_voice_is_speech_like():
    rng = np.random.default_rng(0)
    v = synthetic.synthetic_voice(1.0, 16000, "es", rng)
    assert v.shape == (16000,) and v.dtype == np.float32 and 0.4 < np.abs(v).max() <= 0.5
    spec = np.abs(np.fft.rfft(v))
    freqs = np.fft.rfftfreq(16000, 1 / 16000)
    assert spec[(freqs > 100) & (freqs < 3000)].sum() > 0.9 * spec.sum()  # energy in the speech band


@pytest.mark.parametrize("seed", range(6))
def test_each_colour_hums_in_its_own_band_on_grey(seed):
    """Only the shapes carry colour, and a shape's hum stays within +-6 % of its colour's note whatever its
    height, so what is seen (colour) fixes what is heard (band) in every clip: the cue held-out clips share."""
    sr, fps, frames = 16000, 25, 100
    shot = synthetic._ShotRenderer(np.random.default_rng(seed), 96, 72, fps, sr, frames)
    assert len(set(shot.bg.tolist())) == 1  # grey background
    spectrum = np.abs(np.fft.rfft(shot.background())) ** 2
    freqs = np.fft.rfftfreq(int(round(frames / fps * sr)), 1 / sr)

    def band(note):
        return spectrum[(freqs >= 0.94 * note) & (freqs <= 1.06 * note)].sum()

    present = {s.tone for s in shot.shapes}
    harmonics = [h * t for t in present for h in (3, 5)]  # a square's odd harmonics may sit in another band
    absent = [n for n in synthetic._NOTES if n not in present and not any(0.9 * n <= h <= 1.1 * n for h in harmonics)]
    assert absent
    assert min(band(t) for t in present) > 50 * max(band(n) for n in absent)
