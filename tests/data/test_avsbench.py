"""AVSBench layout (shipped fixture and generated copies), colour map, errors, robustness, synthetic clips."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avfast.data import DataError
from avfast.data.avsbench import (AVSS_NUM_CLASSES, AVSBenchDataset, SyntheticAVS, add_noise_at_snr, avss_palette,
                                  clip_paths, collate_avs, colour_to_labels, labels_to_colour, read_image,
                                  write_image, write_synthetic_avsbench)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "avsbench"


@pytest.fixture()
def layout(tmp_path):
    """A writable copy of the shipped fixture."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "avsbench"))


def test_palette_is_avsbench_colour_map():
    pal = avss_palette()
    assert pal.shape == (AVSS_NUM_CLASSES, 3)
    assert pal[0].tolist() == [0, 0, 0]            # background
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[8].tolist() == [64, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in pal.tolist()}) == AVSS_NUM_CLASSES
    labels = np.array([[0, 1, 70], [15, 8, 3]])
    assert (colour_to_labels(labels_to_colour(labels)) == labels).all()
    bad = labels_to_colour(labels)
    bad[0, 0] = (1, 2, 3)
    with pytest.raises(DataError, match=r"mask.png: colour \(1, 2, 3\) is not in AVSBench's 71-class colour map"):
        colour_to_labels(bad, "mask.png")


def test_images_round_trip(tmp_path):
    img = (np.random.default_rng(0).uniform(size=(6, 10, 3)) * 255).astype(np.uint8)
    write_image(tmp_path / "a.png", img)
    assert (read_image(tmp_path / "a.png") == img).all()
    write_image(tmp_path / "b.jpg", np.full((16, 16, 3), 200, np.uint8))
    assert np.abs(read_image(tmp_path / "b.jpg").astype(int) - 200).max() <= 3


@pytest.mark.parametrize("task,frames", [("s4", 5), ("ms3", 5), ("avss", 10)])
def test_fixture_reads_for_each_task_at_224(task, frames):
    ds = AVSBenchDataset(FIXTURE, task, "val")
    assert len(ds) == 1
    item = ds[0]
    assert item["frames"].shape == (frames, 3, 224, 224) and item["frames"].dtype == torch.float32
    assert item["audio"].shape == (frames, 16000)
    assert item["masks"].shape == (frames, 224, 224)
    assert item["valid"].all()
    raw = read_image(FIXTURE / ds.subset / item["uid"] / "labels_rgb" / "0.png")
    if task == "avss":
        assert item["masks"].dtype == torch.int64
        assert set(item["masks"].unique().tolist()) <= set(np.unique(colour_to_labels(raw)).tolist())
    else:
        assert set(item["masks"].unique().tolist()) <= {0.0, 1.0} and item["masks"].sum() > 0
    # the tones are in the wav: the audio is not silent
    assert item["audio"].abs().max() > 0.1
    feats = AVSBenchDataset(FIXTURE, task, "val", audio="features")[0]["audio"]
    assert feats.shape == (frames, 128)
    batch = collate_avs([item, item])
    assert batch["frames"].shape == (2, frames, 3, 224, 224) and batch["uid"] == [item["uid"]] * 2


def test_s4_train_labels_only_the_first_frame():
    item = AVSBenchDataset(FIXTURE, "s4", "train")[0]
    assert item["valid"].tolist() == [True, False, False, False, False]


def test_missing_mask_file_names_the_file(layout):
    target = layout / "v1m" / "v1m_val_000" / "labels_rgb" / "3.png"
    target.unlink()
    ds = AVSBenchDataset(layout, "ms3", "val")
    with pytest.raises(DataError, match=r"v1m_val_000/labels_rgb/3.png: mask file missing"):
        ds[0]


def test_wrong_size_mask_names_the_file(layout):
    target = layout / "v2" / "v2_val_000" / "labels_rgb" / "2.png"
    write_image(target, np.zeros((20, 32, 3), np.uint8))
    ds = AVSBenchDataset(layout, "avss", "val")
    with pytest.raises(DataError, match=r"v2_val_000/labels_rgb/2.png: mask is 32x20 but its frame 2.jpg is 32x32"):
        ds[0]


def test_metadata_errors(layout, tmp_path):
    with pytest.raises(DataError, match="metadata.csv: AVSBench metadata csv not found"):
        AVSBenchDataset(tmp_path, "s4", "val")
    with open(layout / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["vid", "split"], ["a", "val"]])
    with pytest.raises(DataError, match=r"missing columns \['label', 'uid'\]"):
        AVSBenchDataset(layout, "s4", "val")
    with pytest.raises(ValueError, match="task must be"):
        AVSBenchDataset(FIXTURE, "vggss", "val")
    with pytest.raises(DataError, match="no v1s clips in split 'test'"):
        AVSBenchDataset(FIXTURE, "s4", "test")


def test_noise_at_snr():
    g = torch.Generator().manual_seed(0)
    wave, noise = torch.randn(3, 16000, generator=g), torch.randn(3, 16000, generator=g)
    for snr in (-5.0, 0.0, 10.0):
        noisy = add_noise_at_snr(wave, snr, noise=noise)
        measured = 10 * torch.log10(wave.pow(2).mean(-1) / (noisy - wave).pow(2).mean(-1))
        torch.testing.assert_close(measured, torch.full((3,), snr), atol=1e-4, rtol=0)
    assert add_noise_at_snr(torch.zeros(1, 100), 0.0).abs().max() == 0.0


def test_snr_setting_and_frame_mixing_of_a_quarter_of_ms3(tmp_path):
    root = write_synthetic_avsbench(tmp_path, clips_per_split={"train": 8}, tasks=("ms3",), size=24)
    clean = AVSBenchDataset(root, "ms3", "train", size=24)
    noisy = AVSBenchDataset(root, "ms3", "train", size=24, snr_db=0.0)
    a, b = clean[0]["audio"], noisy[0]["audio"]
    snr = 10 * torch.log10(a.pow(2).mean() / (b - a).pow(2).mean())
    assert abs(snr.item()) < 0.5
    mixed = AVSBenchDataset(root, "ms3", "train", size=24, frame_mix=0.25, seed=3)
    assert len(mixed.mixing) == 2                               # 1/4 of 8 clips
    index, (other, swapped) = next(iter(mixed.mixing.items()))
    item, source = mixed[index], clean[other]
    torch.testing.assert_close(item["frames"][swapped], source["frames"][swapped])
    assert item["masks"][swapped].sum() == 0                   # swapped-in objects are silent
    kept = [i for i in range(5) if i not in swapped]
    torch.testing.assert_close(item["masks"][kept], clean[index]["masks"][kept])
    assert AVSBenchDataset(root, "ms3", "train", frame_mix=0.25, seed=3).mixing.keys() == mixed.mixing.keys()


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_synthetic_masks_are_the_sounding_shapes(task):
    gen = SyntheticAVS(task, size=32, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        clip = gen.clip(rng)
        present = set(np.unique(clip["labels"]).tolist()) - {0}
        assert present <= set(clip["sounding"].tolist())
        if task == "s4":   # two shapes on screen, one sounding: the audio decides which
            assert len(clip["sounding"]) == 1 and len(clip["classes"]) == 2
    data = gen.tensors(3)
    t = gen.frames
    assert data["frames"].shape == (3, t, 3, 32, 32) and data["audio"].shape == (3, t, 128)
    assert data["masks"].dtype == (torch.int64 if task == "avss" else torch.float32)
    waves = SyntheticAVS(task, size=32, audio="wave").tensors(1)["audio"]
    assert waves.shape == (1, t, 16000)


@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_avsbench_object_layout(tmp_path, task):
    """The AVSBench-object release (s4_data / ms3_data folders, per-task csv), found under its
    Single-source / Multi-sources folder; same items as the semantic layout of the same clips."""
    sub = "Single-source" if task == "s4" else "Multi-sources"
    kw = {"clips_per_split": {"train": 2, "test": 1}, "tasks": (task,), "size": 24, "seed": 5}
    write_synthetic_avsbench(tmp_path / "object" / sub, layout="object", **kw)
    write_synthetic_avsbench(tmp_path / "semantic", **kw)
    paths = AVSBenchDataset(tmp_path / "object", task, "test", size=24).clips[0]
    category = paths.masks[0].parent.parent.name
    assert paths == clip_paths("object", tmp_path / "object" / sub, task, "test", paths.uid, category)
    expected_frame = "v1s_test_000_1.png" if task == "s4" else "v1m_test_000.mp4_1.png"
    assert paths.frames[0].name == expected_frame and paths.masks[4].name.endswith("_5.png")
    obj = AVSBenchDataset(tmp_path / "object", task, "train", size=24)
    sem = AVSBenchDataset(tmp_path / "semantic", task, "train", size=24)
    assert obj.layout == "object" and sem.layout == "semantic" and len(obj) == 2
    a, b = obj[1], sem[1]
    torch.testing.assert_close(a["masks"], b["masks"])
    torch.testing.assert_close(a["audio"], b["audio"])
    assert (a["frames"] - b["frames"]).abs().mean() < 0.1         # PNG vs JPEG frames
    assert a["valid"].tolist() == ([True] + [False] * 4 if task == "s4" else [True] * 5)
    assert AVSBenchDataset(tmp_path / "object", task, "train", size=24, audio="features")[0]["audio"].shape == (5, 128)
    missing = paths.masks[2]
    missing.unlink()
    with pytest.raises(DataError, match=f"{missing.name}: mask file missing"):
        AVSBenchDataset(tmp_path / "object", task, "test", size=24)[0]
    with pytest.raises(ValueError, match="no task 'avss'"):
        clip_paths("object", tmp_path, "avss", "test", "x")


def test_avss_with_the_five_frame_subsets_pads_to_ten(tmp_path):
    root = write_synthetic_avsbench(tmp_path, clips_per_split={"train": 1, "val": 1}, size=24)
    ds = AVSBenchDataset(root, "avss", "train", size=24, subsets=("v1s", "v1m", "v2"))
    assert sorted(c.uid for c in ds.clips) == ["v1m_train_000", "v1s_train_000", "v2_train_000"]
    items = {c.uid: ds[i] for i, c in enumerate(ds.clips)}
    for uid, valid in (("v1s_train_000", [True] + [False] * 9), ("v1m_train_000", [True] * 5 + [False] * 5),
                       ("v2_train_000", [True] * 10)):
        item = items[uid]
        assert item["frames"].shape == (10, 3, 24, 24) and item["audio"].shape == (10, 16000)
        assert item["valid"].tolist() == valid, uid
        assert item["masks"].dtype == torch.int64
    assert items["v1m_train_000"]["frames"][5:].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown AVSBench subsets"):
        AVSBenchDataset(root, "avss", "train", subsets=("v3",))
