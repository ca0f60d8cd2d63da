"""GPU paths (skipped without a CUDA GPU): DALI reader frame selection, augmentation on CUDA."""
import pytest
import torch

from avfast.data import PyAVVideoReader, VideoAugment
from media import frame_ids, write_indexed_video

pytestmark = pytest.mark.gpu


def test_dali_reader_matches_pyav(tmp_path):
    pytest.importorskip("nvidia.dali")
    from avfast.data import DaliVideoReader

    path = write_indexed_video(tmp_path / "v.mp4", [k / 30 for k in range(90)], size=(64, 96))
    reader = DaliVideoReader(batch_size=2)
    clips = [dict(path=path, start=0.5, duration=2.0, num_frames=8, fps=25.0),
             dict(path=path, start=1.0, duration=1.5, num_frames=8, fps=25.0)]
    got = reader.read_batch(clips)
    for frames, c in zip(got, clips):
        assert frames.is_cuda and frames.shape == (8, 3, 64, 96) and frames.dtype == torch.uint8
        ref = PyAVVideoReader().read(path, c["start"], c["duration"], num_frames=8, fps=25.0)
        assert frame_ids(frames.cpu()) == frame_ids(ref)


def test_augment_on_cuda_matches_cpu():
    frames = torch.randint(0, 256, (4, 3, 90, 160), dtype=torch.uint8)
    aug = VideoAugment(short_side=(64, 80), crop=56)
    cpu = aug(frames, torch.Generator().manual_seed(0))
    gpu = aug(frames.cuda(), torch.Generator().manual_seed(0))
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert (gpu.cpu() - cpu).abs().max() < 0.05  # uint8 vs float resize rounding
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert aug(frames.cuda(), gen).shape == cpu.shape
