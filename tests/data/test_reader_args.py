"""Every argument check of the readers, and audio that is truncated or in a codec FFmpeg cannot decode."""
import math

import pytest

from avfast.data import DataError, PyAVVideoReader, load_audio
from avfast.data.video import clip_times
from media import tone, write_audio, write_indexed_video


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("args")
    write_indexed_video(d / "v.mp4", [k / 25 for k in range(50)])
    write_audio(d / "a.mkv", {"en": tone(440, 3.0, 16000)}, sample_rate=16000)
    data = (d / "a.mkv").read_bytes()
    (d / "cut.mkv").write_bytes(data[: len(data) // 3])              # the stream stops about 1 s in
    assert b"A_FLAC" in data
    (d / "nocodec.mkv").write_bytes(data.replace(b"A_FLAC", b"A_XXXX"))   # a codec id no FFmpeg knows
    return d


@pytest.mark.parametrize("kwargs,match", [
    (dict(start=-0.5), "start must be a finite number >= 0"),
    (dict(start=math.nan), "start must be a finite number >= 0"),
    (dict(fps=0.0), "fps must be a finite number > 0"),
    (dict(fps=-25.0), "fps must be a finite number > 0"),
    (dict(fps=math.inf), "fps must be a finite number > 0"),
    (dict(num_frames=0), "num_frames must be an int >= 1"),
    (dict(num_frames=0, sampling="contiguous"), "num_frames must be an int >= 1"),
    (dict(num_frames=2.5), "num_frames must be an int >= 1"),
    (dict(sampling="random"), "sampling must be 'uniform' or 'contiguous'"),
    (dict(duration=0.0), "duration must be > 0"),
])
def test_video_reader_argument_checks(media, kwargs, match):
    args = dict(start=0.0, duration=1.0, num_frames=4) | kwargs
    with pytest.raises(ValueError, match=match):
        PyAVVideoReader().read(media / "v.mp4", **args)


def test_clip_times_argument_checks():
    with pytest.raises(ValueError, match="num_frames"):
        clip_times(0.0, 1.0, -1, 25.0)
    with pytest.raises(ValueError, match="fps"):
        clip_times(0.0, 1.0, 4, math.nan)
    assert len(clip_times(0.0, None, 3, 25.0, "contiguous")) == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(sample_rate=0), "sample_rate must be an int > 0"),
    (dict(sample_rate=-16000), "sample_rate must be an int > 0"),
    (dict(sample_rate=16000.5), "sample_rate must be an int > 0"),
    (dict(channels=3), "channels must be None, 1 or 2"),
    (dict(channels=0), "channels must be None, 1 or 2"),
    (dict(start=-1.0), "need start >= 0 and duration > 0"),
    (dict(start=math.inf), "need start >= 0 and duration > 0"),
    (dict(duration=0.0), "need start >= 0 and duration > 0"),
    (dict(duration=-2.0), "need start >= 0 and duration > 0"),
])
def test_audio_reader_argument_checks(media, kwargs, match):
    args = dict(sample_rate=16000) | kwargs
    with pytest.raises(ValueError, match=match):
        load_audio(media / "a.mkv", **args)


def test_audio_truncated_mid_file_is_data_error(media):
    assert load_audio(media / "a.mkv", 16000, start=0.0, duration=3.0).shape == (1, 48000)
    assert load_audio(media / "cut.mkv", 16000, start=0.0, duration=0.5).shape == (1, 8000)   # the intact part
    with pytest.raises(DataError, match=r"cut.mkv: .*(ends at|no decodable audio|truncated)"):
        load_audio(media / "cut.mkv", 16000, start=0.0, duration=3.0)


def test_audio_codec_ffmpeg_cannot_decode_is_data_error(media):
    with pytest.raises(DataError, match=r"nocodec.mkv: .*(unsupported audio codec|no audio stream|cannot open)"):
        load_audio(media / "nocodec.mkv", 16000)
