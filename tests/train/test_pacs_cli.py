"""Family ``pacs``: configs carry the seed's settings, training on synthetic pairs shows the ablation
order LateFusion < + DSE < + DCL, and ``avfast pacs train|eval|seeds`` run on the shipped fixture."""
import json
from pathlib import Path

import pytest

from avfast.cli import main
from avfast.train.config import ConfigError, load_config
from avfast.train.run import train_family

CONFIGS = Path(__file__).parent.parent.parent / "configs" / "pacs"
FIXTURE = Path(__file__).parent.parent / "fixtures" / "pacs"
TINY = ["data.root=" + str(FIXTURE), "model.text_dim=6", "model.video_dim=5", "model.audio_dim=3", "model.hidden=8",
        "model.out_dim=4", "model.dse_hidden=8", "model.g_dim=4", "model.rnn=6", "model.f_dim=3", "model.z_dim=2",
        "model.clm_dim=3", "model.k=2", "data.batch_size=2", "eval.batch_size=2", "optim.epochs=1",
        "train.eval_every=1", "train.progress=false", "train.threads=1"]


def test_configs_carry_the_seed_settings():
    dcl = load_config(CONFIGS / "dcl.yaml")
    assert (dcl.family, dcl.model.variant, dcl.model.dse, dcl.model.clm) == ("pacs", "late_fusion", "video", True)
    assert (dcl.model.k, dcl.model.tau, dcl.model.rnn, dcl.model.hidden) == (5, 2.0, 256, 768)
    assert (dcl.loss.gamma, dcl.loss.alpha, dcl.loss.beta, dcl.loss.theta, dcl.loss.margin) == (1, 10, 10, 1, 1)
    assert (dcl.optim.lr, dcl.optim.weight_decay, dcl.data.batch_size, dcl.optim.epochs) == (5e-4, 5e-5, 64, 40)
    assert dcl.train.early_stopping_patience > 0
    late = load_config(CONFIGS / "late_fusion.yaml")
    assert (late.model.dse, late.model.clm) == ("none", False)
    for name, variant in (("clip", "clip"), ("audioclip", "audioclip")):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert (cfg.model.variant, cfg.optim.lr, cfg.optim.weight_decay) == (variant, 1e-4, 1e-5)
    assert load_config(CONFIGS / "dse_audio.yaml").model.dse == "audio"
    assert load_config(CONFIGS / "clm_only.yaml").model.dse == "none"
    assert not load_config(CONFIGS / "dse_only.yaml").model.clm


def test_k_larger_than_the_batch_is_refused():
    with pytest.raises(ConfigError, match=r"model.k \(65\) must be <= data.batch_size \(64\)"):
        load_config(CONFIGS / "dcl.yaml", ["model.k=65"])


def test_synthetic_training_shows_the_ablation_order(tmp_path):
    """~35 s on one CPU thread: LateFusion < + DSE < + DCL on held-out synthetic pairs, all above chance;
    the task loss of the DCL run falls."""
    acc = {}
    for name, sets in (("late", ["model.dse=none", "model.clm=false"]), ("dse", ["model.clm=false"]), ("dcl", [])):
        cfg = load_config(CONFIGS / "demo_synthetic.yaml", sets + ["train.threads=1"])
        report = train_family(cfg, tmp_path / name, device="cpu", log=lambda *_: None)
        acc[name] = report["test"]["acc"]
        assert set(report["test"]["per_material"]) == {"material_0", "material_1", "material_2"}
    assert 0.5 < acc["late"] < acc["dse"] < acc["dcl"], acc
    logged = [json.loads(line) for line in (tmp_path / "dcl" / "metrics.jsonl").read_text().splitlines()]
    task = [row["task"] for row in logged if "task" in row]
    assert task[-1] < task[0] - 0.1, task


def test_train_eval_and_seeds_commands_on_the_fixture(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pacs", "train", "--config", str(CONFIGS / "dcl.yaml"), "--out", str(out), "--device", "cpu",
                 *sum((["--set", s] for s in TINY), [])]) == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["test"]["acc"] <= 1.0 and "material_acc" in report["test"]
    assert report["train"]["steps"] == 3                         # 6 training items, batch 2
    results = tmp_path / "eval.json"
    assert main(["pacs", "eval", "--checkpoint", str(out), "--split", "val", "--json", str(results),
                 "--device", "cpu"]) == 0
    val = json.loads(results.read_text())
    assert set(val) >= {"acc", "per_material", "material_acc"}
    capsys.readouterr()
    main(["pacs", "seeds", "--config", str(CONFIGS / "dcl.yaml"), "--out", str(tmp_path / "seeds"),
          "--seeds", "2", "--k", "1", "2", "--device", "cpu", *sum((["--set", s] for s in TINY), [])])
    printed = capsys.readouterr().out
    assert "k=1: PACS acc" in printed and "±" in printed and "PACS-material" in printed
    summary = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert len(summary["k=2"]["acc"]) == 2
