"""`avfast events train|eval|localize` on synthetic clips and on the VGGSound-layout fixture."""
from pathlib import Path

import pytest

from avfast.cli import main

CFG = str(Path(__file__).resolve().parents[2] / "configs" / "events" / "synthetic_cpu.yaml")
FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "vggsound")
SMALL = ["--set", "optim.epochs=1", "--set", "data.synthetic_clips=16", "--set", "data.batch_size=8"]


def test_train_eval_localize_synthetic(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["events", "train", "--config", CFG, "--out", str(out), *SMALL]) == 0
    text = capsys.readouterr().out
    for key in ("mAP_onset", "mAP_instant", "mAP_continuous", "cIoU", "AUC", "layer_table:", "continuous_1 "):
        assert key in text, key
    assert len(list((out / "heatmaps" / "test").glob("*.png"))) == 4
    assert main(["events", "eval", "--checkpoint", str(out), "--split", "val"]) == 0
    assert "mAP " in capsys.readouterr().out
    assert main(["events", "localize", "--checkpoint", str(out), "--split", "val", "--heatmaps",
                 str(tmp_path / "maps"), "--clips", "2"]) == 0
    text = capsys.readouterr().out
    assert "cIoU" in text and "AUC" in text and len(list((tmp_path / "maps").glob("*.png"))) == 2
    assert "centre_mean_cIoU" in text and "oracle_mean_cIoU" in text     # reference maps on the same boxes


def test_train_on_vggsound_layout(tmp_path, capsys):
    sets = ["--set", f"data.root={FIXTURE}", "--set", "model.classes=4", "--set", "model.segments=1",
            "--set", "model.frames=10", "--set", "data.batch_size=2", "--set", "eval.batch_size=2",
            "--set", "optim.epochs=1"]
    assert main(["events", "train", "--config", CFG, "--out", str(tmp_path / "r"), *sets]) == 0
    assert "mAP_continuous" in capsys.readouterr().out


def test_config_errors(tmp_path):
    from avfast.train.config import ConfigError

    with pytest.raises(ConfigError, match="needs >= 2"):
        main(["events", "train", "--config", CFG, "--out", str(tmp_path / "b"), *SMALL, "--set", "data.batch_size=1"])
    with pytest.raises(ConfigError, match="model.frames"):
        main(["events", "train", "--config", CFG, "--out", str(tmp_path / "x"), "--set", "model.frames=20"])
    with pytest.raises(ConfigError, match="model.classes"):
        main(["events", "train", "--config", CFG, "--out", str(tmp_path / "y"), "--set", "model.classes=7"])
