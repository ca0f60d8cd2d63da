"""`avfast dub`: subtitles, time-fitting, mixing, plug-ins (missing ones raise clearly), the CLI."""
import importlib.util

import numpy as np
import pytest

from avfast.cli import main
from avfast.data import DataError, audio_tracks, load_audio, read_manifest, synthetic
from avfast.data.dubbing import Cue, DubPipeline, fit_to_slot, read_subtitles, time_stretch, write_subtitles
from media import dominant_freq, tone

SR = 16000


def test_read_srt_and_vtt(tmp_path):
    srt = tmp_path / "a.srt"
    srt.write_text("1\n00:00:01,500 --> 00:00:03,000\n<i>Hello</i>\nthere\n\n2\n01:00:00,000 --> 01:00:02,250\nBye\n")
    assert read_subtitles(srt) == [Cue(1.5, 3.0, "Hello there"), Cue(3600.0, 3602.25, "Bye")]
    vtt = tmp_path / "a.vtt"
    vtt.write_text("WEBVTT\n\n00:01.000 --> 00:02.500 align:start\n{b}Hola{/b}\n")
    assert read_subtitles(vtt) == [Cue(1.0, 2.5, "Hola")]
    cues = [Cue(0.25, 1.0, "uno"), Cue(2.0, 3.5, "dos")]
    assert read_subtitles(write_subtitles(tmp_path / "b.srt", cues)) == cues
    (tmp_path / "c.srt").write_text("nothing here")
    with pytest.raises(DataError, match="c.srt: no subtitle cues"):
        read_subtitles(tmp_path / "c.srt")
    with pytest.raises(DataError, match="subtitle file does not exist"):
        read_subtitles(tmp_path / "missing.srt")


def test_time_stretch_keeps_pitch():
    x = tone(440, 2.0, SR)
    y = time_stretch(x, 1.5)
    assert abs(len(y) - len(x) / 1.5) < 1100
    assert abs(dominant_freq(y[2000:-2000], SR) - 440) < 5


def test_fit_to_slot():
    x = tone(300, 1.0, SR)
    padded, rate = fit_to_slot(x, 2 * SR)
    assert rate == 1.0 and len(padded) == 2 * SR and np.all(padded[SR:] == 0)
    faster, rate = fit_to_slot(x, int(0.8 * SR))
    assert rate == pytest.approx(1.25) and len(faster) == int(0.8 * SR)
    cut, rate = fit_to_slot(x, SR // 4, max_speedup=1.5)
    assert rate == 1.5 and len(cut) == SR // 4 and cut[-1] == 0


def fake_tts(text, language, sample_rate, speed=1.0):
    return tone(200 + 100 * len(text.split()), 0.4 * len(text.split()), sample_rate)


@pytest.fixture()
def source(tmp_path):
    from avfast.data import save_audio

    return save_audio(tmp_path / "orig.flac", tone(1000, 4.0, SR, amp=0.4), SR)


def test_pipeline_places_lines_in_their_slots(source):
    cues = [Cue(0.5, 1.5, "one two"), Cue(2.5, 3.5, "three")]
    wave, report = DubPipeline("es", tts=fake_tts, background="none", sample_rate=SR).run(source, translation=cues)
    w = wave[0].numpy()
    assert wave.shape == (1, 4 * SR) and report == {"lines": 2, "sped_up": 0, "cut": 0}
    assert np.abs(w[: int(0.5 * SR)]).max() == 0 and np.abs(w[int(1.5 * SR): int(2.5 * SR)]).max() == 0
    assert abs(dominant_freq(w[int(0.5 * SR): int(1.3 * SR)], SR) - 400) < 5
    assert abs(dominant_freq(w[int(2.5 * SR): int(2.9 * SR)], SR) - 300) < 5


def test_pipeline_ducks_the_original_and_uses_a_translator(source):
    translate = lambda texts, src, dst: [f"{t} {dst}" for t in texts]  # noqa: E731
    pipe = DubPipeline("es", tts=fake_tts, translator=translate, background="duck", sample_rate=SR)
    wave, report = pipe.run(source, transcript=[Cue(1.0, 3.0, "a b c")], source_language="en")
    w, orig = wave[0].numpy(), load_audio(source, SR)[0].numpy()
    np.testing.assert_allclose(w[: SR // 2], orig[: SR // 2], atol=1e-6)  # untouched before the line
    mid = slice(int(1.6 * SR), int(2.4 * SR))
    assert abs(dominant_freq(w[mid], SR) - 600) < 5  # "a b c es": 4 words
    spec = np.abs(np.fft.rfft(w[mid]))
    k1000 = int(1000 * len(w[mid]) / SR)
    assert spec[k1000 - 2:k1000 + 3].max() < 0.3 * spec.max()  # the original is ducked under the line


def test_missing_plugins_raise_clearly(source):
    with pytest.raises(ValueError, match="unknown translator 'nope'"):
        DubPipeline("es", tts=fake_tts, translator="nope")
    with pytest.raises(ValueError, match="translator plug-in"):
        DubPipeline("es", tts=fake_tts).run(source, transcript=[Cue(0, 1, "x")])
    if importlib.util.find_spec("argostranslate") is None:
        with pytest.raises(ImportError, match="pip install argostranslate"):
            DubPipeline("es", tts=fake_tts, translator="argos")
    if importlib.util.find_spec("demucs") is None:
        with pytest.raises(ImportError, match="pip install demucs"):
            DubPipeline("es", tts=fake_tts, background="demucs").run(source, translation=[Cue(0, 1, "x")])


def test_cli_make_demo_data(tmp_path, capsys):
    assert main(["make-demo-data", str(tmp_path / "d"), "--movies", "1", "--shots", "1", "--width", "64",
                 "--height", "48", "--voice", "synthetic"]) == 0
    assert "wrote 1 clips" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "d" / "manifest.jsonl")) == 1


@pytest.mark.skipif(not synthetic.espeak_available(), reason="espeak-ng not installed")
def test_cli_dub_with_espeak(demo, tmp_path, capsys):
    clip = read_manifest(demo)[0]
    subs = write_subtitles(tmp_path / "de.srt", [Cue(0.5, 2.0, "Der rote Ball springt"), Cue(2.2, 2.6, "sehr lange Worte hier")])
    out, muxed = tmp_path / "de.flac", tmp_path / "dubbed.mp4"
    assert main(["dub", clip.video, "--to", "de", "--target-subs", str(subs), "--track", "en", "-o", str(out),
                 "--mux", str(muxed)]) == 0
    assert "2 lines" in capsys.readouterr().out
    assert [t["language"] for t in audio_tracks(muxed)][-1] == "de"
    dubbed = load_audio(muxed, SR, 0.5, 1.5, track="de")[0].numpy()
    original = load_audio(clip.video, SR, 0.5, 1.5, track="en")[0].numpy()
    assert np.abs(dubbed - original).max() > 0.1
    assert main(["dub", clip.video, "--to", "de", "-o", str(out)]) == 1  # neither subtitles nor plug-ins
