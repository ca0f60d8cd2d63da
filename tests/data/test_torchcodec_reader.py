"""``TorchCodecVideoReader`` shows the same frames as ``PyAVVideoReader`` (skipped without a usable torchcodec)."""
import numpy as np
import pytest

from avfast.data import DataError, PyAVVideoReader, get_video_reader
from media import frame_ids, write_indexed_video


def _reader():
    try:
        return get_video_reader("torchcodec")
    except ImportError:
        pytest.skip("torchcodec not installed (pip install torchcodec)")
    except Exception as exc:   # installed but its FFmpeg libraries or torch/CUDA build are missing
        pytest.skip(f"torchcodec unusable here: {str(exc).strip().splitlines()[0][:200]}")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("tc")
    vfr = [0.0, 0.1, 0.15, 0.5, 0.52, 0.9, 1.3, 1.35, 1.4, 2.0, 2.6, 3.0]
    return {"cfr25": write_indexed_video(d / "cfr25.mp4", [k / 25 for k in range(80)]),
            "cfr30": write_indexed_video(d / "cfr30.mp4", [k / 30 for k in range(90)]),
            "vfr": write_indexed_video(d / "vfr.mkv", vfr, step=20)}


CASES = [  # (video, start, duration, num_frames, fps, sampling)
    ("cfr25", 1.0, 2.0, 5, 25.0, "uniform"),
    ("cfr25", 0.0, None, 4, 25.0, "contiguous"),
    ("cfr30", 0.5, 2.0, None, 25.0, "uniform"),     # fewer frames than stored
    ("cfr30", 0.0, 0.5, None, 60.0, "uniform"),     # more frames than stored: repeats
    ("vfr", 0.3, 2.5, 10, 10.0, "uniform"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[4]:g}fps-{c[5]}")
def test_same_frames_as_pyav(videos, case):
    reader = _reader()
    name, start, duration, num_frames, fps, sampling = case
    step = 20 if name == "vfr" else 3
    kw = dict(start=start, duration=duration, num_frames=num_frames, fps=fps, sampling=sampling)
    ours, ref = reader.read(videos[name], **kw), PyAVVideoReader().read(videos[name], **kw)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert frame_ids(ours, step) == frame_ids(ref, step)


def test_grid_times_just_below_a_frame_take_that_frame(videos):
    # start + k / fps can land a float hair below a stored timestamp (0.04 + 6 / 25 = 0.27999...):
    # the frame stored at that instant is the one shown, as in the PyAV reader
    reader, pyav = _reader(), PyAVVideoReader()
    for start in np.arange(0, 40) * 0.04:
        kw = dict(start=float(start), duration=1.0, num_frames=None, fps=25.0)
        assert frame_ids(reader.read(videos["cfr25"], **kw)) == frame_ids(pyav.read(videos["cfr25"], **kw)), start


def test_bad_input_raises_data_error(videos, tmp_path):
    reader = _reader()
    with pytest.raises(DataError, match="ends after the video"):
        reader.read(videos["cfr25"], start=2.0, duration=5.0, fps=25.0)
    with pytest.raises(DataError, match="missing.mp4"):
        reader.read(tmp_path / "missing.mp4", duration=1.0)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(DataError, match="bad.mp4"):
        reader.read(bad, duration=1.0)
