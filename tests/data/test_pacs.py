"""PACS layout loader (shipped fixture), its errors naming the item, and the synthetic generator."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avfast.data import DataError
from avfast.data.pacs import SyntheticPACS, load_pacs, write_pacs_layout

FIXTURE = Path(__file__).parent.parent / "fixtures" / "pacs"


def test_fixture_loads_every_split_and_the_material_subset():
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        d = load_pacs(FIXTURE, split)
        assert d["text"].shape == (n, 6)
        assert d["video1"].shape == d["video2"].shape == (n, 4, 5)
        assert d["audio1"].shape == (n, 2, 3)
        assert d["label"].dtype == torch.long and set(d["label"].tolist()) <= {0, 1}
        assert d["materials"] == ["material_0", "material_1", "material_2"]
        assert (d["material"] >= 0).all()
    sub = load_pacs(FIXTURE, "test", subset="material")
    assert sub["label"].shape == (2,) and sub["ids"] == ["test_0000", "test_0001"]
    items = json.loads((FIXTURE / "json" / "train.json").read_text())
    first = np.load(FIXTURE / "features" / "video" / f"{items[0]['obj2']}.npy")
    torch.testing.assert_close(load_pacs(FIXTURE, "train")["video2"][0], torch.from_numpy(first))


def test_dict_keyed_json_as_in_the_public_release(tmp_path):
    root = Path(shutil.copytree(FIXTURE, tmp_path / "pacs"))
    items = json.loads((root / "json" / "val.json").read_text())
    (root / "json" / "val.json").write_text(json.dumps({it.pop("id"): it for it in items}))
    d = load_pacs(root, "val")
    assert d["ids"] == ["val_0000", "val_0001", "val_0002", "val_0003"]
    torch.testing.assert_close(d["video1"], load_pacs(FIXTURE, "val")["video1"])


@pytest.fixture
def root(tmp_path):
    return Path(shutil.copytree(FIXTURE, tmp_path / "pacs"))


def test_missing_feature_file_names_the_file_and_item(root):
    items = json.loads((root / "json" / "train.json").read_text())
    (root / "features" / "audio" / f"{items[2]['obj1']}.npy").unlink()
    with pytest.raises(DataError, match=rf"{items[2]['obj1']}\.npy: feature file not found \(item train_0002"):
        load_pacs(root, "train")


def test_malformed_json_and_bad_items_are_named(root):
    path = root / "json" / "train.json"
    path.write_text("[{\"obj1\": ")
    with pytest.raises(DataError, match="train.json: malformed json"):
        load_pacs(root, "train")
    path.write_text(json.dumps([{"id": "q7", "obj1": "a", "label": 0}]))
    with pytest.raises(DataError, match=r"item 0 \(q7\): missing key\(s\) \['obj2'\]"):
        load_pacs(root, "train")
    path.write_text(json.dumps([{"id": "q8", "obj1": "a", "obj2": "b", "label": 2}]))
    with pytest.raises(DataError, match=r"q8\): label must be 0 or 1"):
        load_pacs(root, "train")
    with pytest.raises(DataError, match="val_material.json: file not found"):
        (root / "json" / "val_material.json").unlink()
        load_pacs(root, "val", subset="material")


def test_mismatched_pair_names_the_item(root):
    items = json.loads((root / "json" / "test.json").read_text())
    np.save(root / "features" / "video" / f"{items[1]['obj2']}.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(DataError, match=r"item test_0001: video2 features \(3, 5\) do not match"):
        load_pacs(root, "test")


def test_nan_features_are_refused(root):
    items = json.loads((root / "json" / "test.json").read_text())
    np.save(root / "features" / "text" / f"{items[0]['id']}.npy", np.full(6, np.nan, np.float32))
    with pytest.raises(DataError, match="NaN or inf"):
        load_pacs(root, "test")


def test_synthetic_pairs_follow_the_property_table():
    gen = SyntheticPACS(materials=4, questions=3, seed=0)
    t = gen.tensors(200, seed=1)
    assert (t["material1"] != t["material2"]).all()
    p1 = gen.properties[t["material1"], t["question"]]
    p2 = gen.properties[t["material2"], t["question"]]
    assert torch.equal(t["label"], (p2 > p1).long())
    # the material's motion is invisible to frame mean pooling: the pooled video carries only the
    # weak static cue, the frame-to-frame motion the dynamic one
    assert t["video1"].shape == (200, 8, 32) and t["audio1"].shape == (200, 4, 32)
    motion = (t["video1"][:, -1] - t["video1"][:, 0])
    codes = gen.dynamic_codes[t["material1"]]
    assert torch.nn.functional.cosine_similarity(motion, codes).mean() > 0.3
    assert torch.equal(gen.tensors(5, seed=3)["video2"], gen.tensors(5, seed=3)["video2"])


def test_written_layout_round_trips(tmp_path):
    gen = SyntheticPACS(materials=3, frames=4, text_dim=6, video_dim=5, audio_dim=3, audio_frames=2)
    write_pacs_layout(tmp_path, gen, {"train": 5}, seed=2)
    d, t = load_pacs(tmp_path, "train"), gen.tensors(5, seed=20)
    for key in ("text", "video1", "video2", "audio1", "audio2", "label"):
        torch.testing.assert_close(d[key], t[key])
    assert d["material"].tolist() == t["material"].tolist()
