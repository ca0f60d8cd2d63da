"""Video and audio readers: timestamps, VFR, fps resampling, sizes, tracks by language, resampling."""
import numpy as np
import pytest
import torch

from avfast.data import DataError, PyAVVideoReader, clip_times, load_audio, audio_tracks, normalize_language
from media import dominant_freq, frame_ids, tone, write_audio, write_indexed_video


def test_clip_times_uniform_and_contiguous():
    t = clip_times(1.0, 3.0, 16, 25.0)
    assert len(t) == 16 and t[0] == 1.0 and abs(t[-1] - (1.0 + 74 / 25)) < 1e-9
    assert np.all(np.diff(t) > 0)
    c = clip_times(2.0, None, 4, 25.0, "contiguous")
    np.testing.assert_allclose(c, 2.0 + np.arange(4) / 25)
    assert len(clip_times(0.0, 1.0, None, 10.0)) == 10
    with pytest.raises(ValueError, match="sampling"):
        clip_times(0, 1, 4, 25, "random")


@pytest.fixture(scope="module")
def cfr25(tmp_path_factory):
    return write_indexed_video(tmp_path_factory.mktemp("v") / "cfr25.mp4", [k / 25 for k in range(80)])


def test_frames_by_timestamp(cfr25):
    frames = PyAVVideoReader().read(cfr25, start=1.0, duration=2.0, num_frames=5, fps=25.0)
    assert frames.shape == (5, 3, 48, 64) and frames.dtype == torch.uint8
    expected = [25 + i for i in np.linspace(0, 49, 5).round().astype(int)]
    assert frame_ids(frames) == expected


def test_contiguous_and_start_zero(cfr25):
    frames = PyAVVideoReader().read(cfr25, start=0.0, num_frames=4, fps=25.0, sampling="contiguous")
    assert frame_ids(frames) == [0, 1, 2, 3]
    whole = PyAVVideoReader().read(cfr25, num_frames=None, fps=25.0)
    assert frame_ids(whole) == list(range(80))


def test_resample_to_lower_and_higher_fps(tmp_path):
    path = write_indexed_video(tmp_path / "v30.mp4", [k / 30 for k in range(90)])
    frames = PyAVVideoReader().read(path, start=0.5, duration=2.0, num_frames=None, fps=25.0)
    assert len(frames) == 50
    stored = [round(k / 30 * 1000) / 1000 for k in range(90)]  # the file keeps milliseconds

    def shown(t):
        return int(np.searchsorted(stored, t + 1e-4, side="right") - 1)

    assert frame_ids(frames) == [shown(0.5 + k / 25) for k in range(50)]
    up = PyAVVideoReader().read(path, start=0.0, duration=0.5, num_frames=None, fps=60.0)
    assert frame_ids(up) == [shown(k / 60) for k in range(30)]


def test_variable_frame_rate(tmp_path):
    times = [0.0, 0.1, 0.15, 0.5, 0.52, 0.9, 1.3, 1.35, 1.4, 2.0, 2.6, 3.0]
    path = write_indexed_video(tmp_path / "vfr.mkv", times, step=20)
    targets = clip_times(0.3, 2.5, 10, 10.0)
    frames = PyAVVideoReader().read(path, start=0.3, duration=2.5, num_frames=10, fps=10.0)
    shown = [int(np.searchsorted(times, t + 1e-6, side="right") - 1) for t in targets]
    assert frame_ids(frames, step=20) == shown


def test_output_size_and_threads(cfr25):
    r = PyAVVideoReader(threads=2, size=32)
    assert r.read(cfr25, 0.0, 1.0, num_frames=3).shape == (3, 3, 32, 43)
    assert r.read(cfr25, 0.0, 1.0, num_frames=3, size=(20, 30)).shape == (3, 3, 20, 30)


def test_clip_outside_video_is_data_error(cfr25):
    with pytest.raises(DataError, match="cfr25.mp4.*ends after the video"):
        PyAVVideoReader().read(cfr25, start=2.0, duration=3.0)
    with pytest.raises(DataError, match="starts at 4.000 s"):
        PyAVVideoReader().read(cfr25, start=4.0, duration=1.0)


@pytest.fixture(scope="module")
def two_tracks(tmp_path_factory):
    sr = 44100
    return write_audio(tmp_path_factory.mktemp("a") / "two.mkv", {"eng": tone(440, 2.0, sr), "spa": tone(1000, 2.0, sr)},
                       sample_rate=sr, video=True)


def test_audio_track_by_language_and_index(two_tracks):
    assert [t["language"] for t in audio_tracks(two_tracks)] == ["en", "es"]
    for track, freq in [("en", 440), ("eng", 440), ("es", 1000), ("spa", 1000), ("es-ES", 1000), (1, 1000), (None, 440)]:
        wave = load_audio(two_tracks, 16000, 0.5, 1.0, track=track)
        assert wave.shape == (1, 16000) and wave.dtype == torch.float32
        assert abs(dominant_freq(wave[0].numpy(), 16000) - freq) < 5, track
    with pytest.raises(DataError, match=r"two.mkv: no audio track in language 'fr'.*\['en', 'es'\]"):
        load_audio(two_tracks, 16000, track="fr")
    with pytest.raises(DataError, match="audio track 5 requested"):
        load_audio(two_tracks, 16000, track=5)


def test_audio_channels_and_resampling(tmp_path):
    sr = 22050
    stereo = np.stack([tone(300, 1.5, sr), tone(700, 1.5, sr, amp=0.25)])
    path = write_audio(tmp_path / "st.wav", {"": stereo}, sample_rate=sr, layout="stereo", codec="pcm_s16le")
    keep = load_audio(path, 48000)
    assert keep.shape == (2, 72000)
    assert abs(dominant_freq(keep[0].numpy(), 48000) - 300) < 3 and abs(dominant_freq(keep[1].numpy(), 48000) - 700) < 3
    mono = load_audio(path, 16000, channels=1)
    assert mono.shape == (1, 24000)
    mono_path = write_audio(tmp_path / "mono.flac", {"": tone(500, 1.0, sr)}, sample_rate=sr)
    pseudo = load_audio(mono_path, 16000, channels=2)
    assert pseudo.shape == (2, 16000) and torch.equal(pseudo[0], pseudo[1])


def test_audio_interval_is_sample_accurate(tmp_path):
    sr = 48000
    wave = np.zeros(3 * sr, np.float32)
    wave[int(1.25 * sr)] = 0.9  # an impulse at 1.25 s
    path = write_audio(tmp_path / "click.flac", {"": wave}, sample_rate=sr)
    cut = load_audio(path, sr, start=1.0, duration=0.5)
    assert cut.shape == (1, 24000)
    assert int(cut[0].abs().argmax()) == int(0.25 * sr)
    with pytest.raises(DataError, match="audio ends at"):
        load_audio(path, sr, start=2.5, duration=2.0)
    tail = load_audio(path, sr, start=2.9, duration=0.3)  # 0.2 s short: padded with silence
    assert tail.shape == (1, 14400) and float(tail[0, 5000:].abs().max()) == 0.0


def test_normalize_language():
    assert normalize_language("eng") == normalize_language("EN") == normalize_language("en_US") == "en"
    assert normalize_language("fre") == normalize_language("fra") == "fr"
    assert normalize_language(None) is None


def test_audio_and_video_cover_the_same_interval(demo):
    """The speaker's mouth (picture) opens with the primary speech (sound) of the same clip."""
    from avfast.data import read_manifest

    clip = read_manifest(demo)[1]
    start, dur = clip.start, clip.duration - 0.1
    frames = PyAVVideoReader().read(clip.video, start, dur, num_frames=None, fps=25.0)
    speech = load_audio(clip.audio[clip.primary], 48000, start, dur)[0] - load_audio(clip.separated, 48000, start, dur)[0]
    h = frames.shape[2]
    r = h // 8
    mouth = frames[:, 0, r + 4 - r // 2: r + 4 + r, 4: 2 * r + 4].float()
    openness = (mouth < 120).float().mean(dim=(1, 2)).numpy()
    hop = 48000 // 25
    rms = np.array([float(speech[k * hop:(k + 1) * hop].pow(2).mean().sqrt()) for k in range(len(frames))])
    assert np.corrcoef(openness, rms)[0, 1] > 0.6
