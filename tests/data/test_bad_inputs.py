"""Bad input: each case is a DataError naming the file and the reason, never a crash or garbage."""
import os

import numpy as np
import pytest

from avfast.data import Clip, DataConfig, DataError, PyAVVideoReader, QuadrupleDataset, load_audio, read_manifest
from media import tone, write_audio, write_indexed_video


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = write_indexed_video(d / "good.mp4", [k / 25 for k in range(75)])
    stream_mkv = write_indexed_video(d / "good.mkv", [k / 25 for k in range(75)])
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    mkv = stream_mkv.read_bytes()
    (d / "truncated.mkv").write_bytes(mkv[: len(mkv) // 2])
    (d / "unsupported.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/XYZ"))
    write_audio(d / "en.flac", {"": tone(300, 1.0, 16000)}, sample_rate=16000)
    return d


@pytest.mark.parametrize("name,reason", [
    ("missing.mp4", "file does not exist"),
    ("empty.mp4", "file is empty"),
    ("corrupt.mp4", "cannot open as video"),
    ("truncated.mp4", "cannot open as video"),  # mp4 index (moov) lost with the second half
    ("unsupported.mkv", "unsupported video codec"),
])
def test_video_reader_errors(files, name, reason):
    with pytest.raises(DataError, match=rf"{name}: {reason}") as info:
        PyAVVideoReader().read(files / name, 0.0, 1.0, num_frames=4)
    assert info.value.path.endswith(name) and info.value.reason.startswith(reason)


def test_truncated_stream_mid_clip(files):
    assert PyAVVideoReader().read(files / "truncated.mkv", 0.0, 0.5, num_frames=4).shape[0] == 4
    with pytest.raises(DataError, match=r"truncated.mkv: .*(truncated|ends)"):
        PyAVVideoReader().read(files / "truncated.mkv", 1.0, 1.9, num_frames=8)


def test_audio_errors(files):
    with pytest.raises(DataError, match="good.mp4: no audio stream"):
        load_audio(files / "good.mp4", 16000)
    with pytest.raises(DataError, match="empty.mp4: file is empty"):
        load_audio(files / "empty.mp4", 16000)
    with pytest.raises(DataError, match="corrupt.mp4: cannot open as audio"):
        load_audio(files / "corrupt.mp4", 16000)
    with pytest.raises(DataError, match=r"en.flac: audio ends at 1.000 s"):
        load_audio(files / "en.flac", 16000, start=0.5, duration=2.0)


def test_unknown_language_in_manifest(files):
    clip = Clip(video=str(files / "good.mp4"), audio={"en": str(files / "en.flac")}, source="s", start=0, end=1)
    with pytest.raises(DataError, match=r"good.mp4: no audio track in language 'de'"):
        clip.audio_source("de")


def test_dataset_raises_with_file_and_reason(files):
    short = Clip(video=str(files / "good.mp4"), audio={"en": str(files / "en.flac")}, source="s", start=0.0, end=0.8)
    ds = QuadrupleDataset([short], "monolingual", DataConfig.demo(audio="wave"))
    with pytest.raises(DataError, match="good.mp4: shot .* shorter than the 1.0 s window"):
        ds[0]
    broken = Clip(video=str(files / "corrupt.mp4"), audio={"en": str(files / "en.flac")}, source="s", start=0.0, end=1.0)
    with pytest.raises(DataError, match="corrupt.mp4: cannot open"):
        QuadrupleDataset([broken], "monolingual", DataConfig.demo(audio="wave"))[0]


def test_bad_manifest_lines(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"video": "a.mp4", "source": "s", "start": 0, "end": 4, "audio": {"en": "a.flac"}}\n{"video": "b.mp4"\n')
    with pytest.raises(DataError, match=r"m.jsonl:2: invalid JSON"):
        read_manifest(m)
    m.write_text('{"video": "a.mp4", "source": "s", "start": 5, "end": 4}\n')
    with pytest.raises(DataError, match=r"m.jsonl:1: need 0 <= start < end"):
        read_manifest(m)
    m.write_text('{"video": "a.mp4", "start": 0, "end": 4}\n')
    with pytest.raises(DataError, match=r"missing field\(s\) \['source'\]"):
        read_manifest(m)
    m.write_text("\n")
    with pytest.raises(DataError, match="no clips"):
        read_manifest(m)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")


def test_data_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(DataError("/x/y.mp4", "file is empty")))
    assert str(err) == "/x/y.mp4: file is empty" and err.reason == "file is empty"
