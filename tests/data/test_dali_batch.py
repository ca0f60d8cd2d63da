"""Batched video decoding for reader='dali', on CPU: specs in the workers (audio decoded there), one
decoder call per batch; a PyAV stand-in for DALI gives exactly the worker path's tensors."""
import json
import shutil
from dataclasses import replace

import pytest
import torch

from avfast.data import DataConfig, DataError, PyAVVideoReader, QuadrupleDataset, build_loader
from avfast.data.dali_batch import BatchVideoDecoder, is_spec_batch, skip_augment_draws
from avfast.data.transforms import VideoAugment

CPU = DataConfig.demo(num_frames=4, crop=48, short_side=(56, 64))
SPEC = replace(CPU, reader="dali")


class BatchReader(PyAVVideoReader):
    """DALI's batch interface on PyAV: records how many clips each call decodes."""

    calls = []

    def read_batch(self, clips):
        type(self).calls.append(len(clips))
        return [self.read(**c, max_short_side=CPU.short_side[1]) for c in clips]


def test_skip_draws_matches_the_augmentation():
    for train in (True, False):
        for flip in (True, False):
            aug = VideoAugment(short_side=(56, 64), crop=48, flip=flip, train=train)
            a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
            aug(torch.zeros(2, 3, 60, 80, dtype=torch.uint8), a)
            skip_augment_draws(aug, b)
            assert torch.equal(a.get_state(), b.get_state()), (train, flip)


@pytest.mark.parametrize("train", [True, False])
def test_spec_batches_decode_to_the_worker_path(demo, train):
    plain = QuadrupleDataset(demo, "multilingual", CPU, train=train)
    specs = QuadrupleDataset(demo, "multilingual", SPEC, train=train)
    item = specs[(2, 0, 1)]
    assert isinstance(item["video"], dict) and item["audio"].shape == plain[(2, 0, 1)]["audio"].shape
    kw = dict(batch_size=3, same_source_fraction=0.0, num_workers=0, seed=4)
    ref = next(iter(build_loader(plain, **kw)))
    got = next(iter(build_loader(specs, **kw)))
    assert is_spec_batch(got["video"]) and len(got["video"]["path"]) == 3 and got["video"]["rng"].dtype == torch.uint8
    BatchReader.calls = []
    decoded = BatchVideoDecoder(SPEC, train=train, reader=BatchReader())(got)
    assert BatchReader.calls == [3, 3]  # one batched call per video entry (video, video_s)
    for key in ("video", "video_s", "audio", "audio_s", "clip", "source"):
        assert torch.equal(decoded[key], ref[key]), key  # audio (and its masks) drawn in the worker as before


def test_spec_errors_are_data_errors_in_the_worker(demo, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(demo.parent, root)
    lines = (root / demo.name).read_text().splitlines()
    bad = json.loads(lines[0])
    (root / "movies" / "broken.mp4").write_bytes(b"not a video")
    bad["video"] = "movies/broken.mp4"
    late = json.loads(lines[1])
    late["start"], late["end"] = 500.0, 505.0  # past the video's end
    manifest = root / "bad.jsonl"
    manifest.write_text("\n".join([json.dumps(bad), json.dumps(late)] + lines[2:]) + "\n")
    ds = QuadrupleDataset(manifest, "multilingual", SPEC)
    with pytest.raises(DataError, match="broken.mp4"):
        ds.load(0)
    with pytest.raises(DataError, match="ends"):
        ds.load(1)
    skipping = QuadrupleDataset(manifest, "multilingual", SPEC, on_error="skip")
    assert skipping[0]["skipped"] >= 1 and isinstance(skipping[0]["video"], dict)


def test_dali_reader_without_dali_is_a_clear_error():
    try:
        import nvidia.dali  # noqa: F401
        pytest.skip("DALI installed: the error path is not reachable")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="DALI"):
        BatchVideoDecoder(SPEC)
