"""MUSIC-AVQA data (seed 003): json layout and slot filling, vocabularies, feature files, errors naming
the question, synthetic scenes, QA metrics per question type, training and the ablation order, command."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avfast.data.avqa import (ANSWERS, QUESTION_TYPES, AVQADataset, SyntheticAVQA, load_questions, parse_question,
                              question_type, question_vocabulary, write_avqa_layout)
from avfast.data.errors import DataError
from avfast.metrics.qa import QA_COLUMNS, format_qa_table, qa_accuracy
from avfast.models.avst import AVSTLoss, avst_tiny, negative_visual

FIXTURE = Path(__file__).parent.parent / "fixtures" / "avqa"


def _layout(tmp_path, channels=16, seconds=60):
    root = tmp_path / "avqa"
    (root / "json").mkdir(parents=True)
    for split in ("train", "test"):
        shutil.copy(FIXTURE / f"avqa-{split}.json", root / "json" / f"avqa-{split}.json")
    for d in ("feats/vggish", "feats/res18_14x14"):
        (root / d).mkdir(parents=True)
    for vid in ("00000272", "00000310", "00000415"):
        rows = np.arange(seconds, dtype=np.float32)
        np.save(root / "feats/vggish" / f"{vid}.npy", np.repeat(rows[:, None], 128, 1))
        np.save(root / "feats/res18_14x14" / f"{vid}.npy",
                np.broadcast_to(rows[:, None, None, None], (seconds, channels, 14, 14)).copy())
    return root


def test_fixture_questions_fill_slots_in_order():
    items = load_questions(FIXTURE / "avqa-train.json")
    assert parse_question(items[3]) == "What is the left instrument of the second sounding instrument".split()
    assert parse_question(items[4]) == "Is the piano louder than the violin".split()
    assert QUESTION_TYPES[question_type(items[1])] == ("Audio-Visual", "Temporal")
    assert QUESTION_TYPES[question_type(items[5])] == ("Visual", "Counting")  # plain list, "answer" key
    vocab = question_vocabulary(items)
    assert vocab[0] == "<pad>" and vocab[1:4] == ["Is", "the", "cello"] and len(vocab) == len(set(vocab))


def test_dataset_reads_features_every_sixth_second(tmp_path):
    ds = AVQADataset(_layout(tmp_path), "train")
    assert len(ds) == 6
    item = ds[3]
    assert item["audio"].shape == (10, 128) and item["visual"].shape == (10, 16, 14, 14)
    assert item["audio"][:, 0].tolist() == list(range(0, 60, 6))  # the public code's [::6]
    assert ANSWERS[int(item["answer"])] == "erhu"
    assert QUESTION_TYPES[int(item["qtype"])] == ("Visual", "Location")
    words = "What is the left instrument of the second sounding instrument".split()
    assert item["question"][:len(words)].tolist() == [ds.vocab[w] for w in words]
    assert item["question"][len(words):].eq(0).all() and item["question"].shape == (14,)
    test = AVQADataset(tmp_path / "avqa", "test")  # test questions use the train vocabulary
    assert test[1]["answer"] == ANSWERS.index("right")


@pytest.mark.parametrize("change, match", [
    ({"question_content": "Is the <Object louder than the <Object>?"}, "malformed template slot"),
    ({"templ_values": "[\"piano\"]"}, "2 slots but templ_values has 1"),
    ({"anser": "maybe"}, "answer 'maybe' is not in the 42-answer vocabulary"),
    ({"type": "[\"Audio\", \"Temporal\"]"}, "unknown question type"),
    ({"templ_values": "[piano"}, "not a JSON list"),
])
def test_bad_questions_name_the_question(tmp_path, change, match):
    root = _layout(tmp_path)
    items = load_questions(root / "json" / "avqa-test.json")
    items[0].update(change)
    (root / "json" / "avqa-test.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=match) as e:
        AVQADataset(root, "test")
    assert "question 90" in str(e.value)


def test_bad_feature_files(tmp_path):
    root = _layout(tmp_path)
    np.save(root / "feats/vggish" / "00000415.npy", np.zeros((5, 128), np.float32))
    ds = AVQADataset(root, "test")
    with pytest.raises(DataError, match="5 segments < T = 10"):
        ds[0]
    (root / "feats/res18_14x14" / "00000272.npy").unlink()
    with pytest.raises(DataError, match="00000272.npy: feature file not found"):
        ds[1]


def test_synthetic_scenes_round_trip_through_the_layout(tmp_path):
    gen = SyntheticAVQA(seed=0)
    t = gen.tensors(300, seed=1)
    assert t["audio"].shape == (300, 10, 128) and t["visual"].shape == (300, 10, 64, 4, 4)
    assert set(t["qtype"].tolist()) == set(range(9))
    assert all(0 <= a < 42 for a in t["answer"].tolist())
    root = write_avqa_layout(tmp_path / "syn", gen, {"train": 20, "test": 10}, seed=3)
    ds = AVQADataset(root, "test", vocab=gen.vocabulary())
    items, audio, visual = gen.items(10, seed=3 * 100 + 1)
    for i in range(10):
        torch.testing.assert_close(ds[i]["audio"], audio[i])
        torch.testing.assert_close(ds[i]["visual"], visual[i], atol=2e-3, rtol=1e-3)  # stored as float16


def test_qa_accuracy_per_type_and_averages():
    # types: 0 Audio/Counting x2, 1 Audio/Comparative, 2 Visual/Counting, 8 AV/Temporal x2
    qtype = torch.tensor([0, 0, 1, 2, 8, 8])
    answer = torch.tensor([3, 4, 0, 5, 20, 21])
    pred = torch.tensor([3, 0, 0, 5, 20, 0])
    r = qa_accuracy(pred, answer, qtype)
    assert r["Audio/Counting"] == 50.0 and r["Audio/Comparative"] == 100.0
    assert r["Audio/Avg"] == pytest.approx(200 / 3)  # question-weighted
    assert r["Visual/Counting"] == 100.0 and np.isnan(r["Visual/Location"]) and r["Visual/Avg"] == 100.0
    assert r["Audio-Visual/Temporal"] == 50.0 and r["Audio-Visual/Avg"] == 50.0
    assert r["All/Avg"] == pytest.approx(400 / 6) and r["count/All/Avg"] == 6
    table = format_qa_table({"AV+Q": r})
    assert "AV+Q" in table and "66.67" in table and len(QA_COLUMNS) == 13
    with pytest.raises(ValueError, match="qtype"):
        qa_accuracy(pred, answer, qtype + 9)


def _train(ablation, train, steps, *, seed=0, lr=1e-3, batch=64, vocab=29):
    torch.manual_seed(seed)
    model = avst_tiny(ablation=ablation, vocab_size=vocab, temporal_positions=True, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr)
    loss_fn, n, losses = AVSTLoss(), train["answer"].shape[0], []
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        b = {k: v[idx] for k, v in train.items()}
        out = model(b["audio"], b["visual"], b["question"], visual_neg=negative_visual(b["visual"]))
        loss, _ = loss_fn(out, b["answer"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_training_lowers_the_loss():
    gen = SyntheticAVQA(seed=0, types=(0,))
    _, losses = _train("av_q_tg_sg", gen.tensors(512, seed=1), 60, batch=32)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:3])


@pytest.mark.slow
def test_ablation_order_q_below_av_q_below_full():
    """The seed's ladder on synthetic scenes: Q-only < AV+Q < AV+Q+TG+SG (overall accuracy)."""
    # A counting, V counting, AV location, AV temporal on 2 x 2 maps (left / right column)
    gen = SyntheticAVQA(seed=0, grid=2, types=(0, 2, 5, 8))
    train, test = gen.tensors(4000, seed=1), gen.tensors(1000, seed=2)
    acc = {}
    for ablation in ("q", "av_q", "av_q_tg_sg"):
        model, _ = _train(ablation, train, 1000)
        with torch.no_grad():
            pred = model(test["audio"], test["visual"], test["question"])["logits"].argmax(-1)
        acc[ablation] = qa_accuracy(pred, test["answer"], test["qtype"])
    print(format_qa_table(acc))
    q, av, full = (acc[k]["All/Avg"] for k in ("q", "av_q", "av_q_tg_sg"))
    assert q + 5 < av < full - 5, (q, av, full)


def test_avqa_command_trains_resumes_and_evaluates_on_the_layout(tmp_path, capsys):
    """``avfast avqa train|eval`` on scenes written in the MUSIC-AVQA layout: the seed's table printed,
    resume from the latest checkpoint, eval of the checkpoint to json."""
    from avfast.cli import main

    root = write_avqa_layout(tmp_path / "avqa", SyntheticAVQA(seed=0), {"train": 64, "val": 16, "test": 16})
    out = tmp_path / "run"
    config = str(Path(__file__).parent.parent.parent / "configs/avqa/demo_synthetic.yaml")
    common = ["--config", config, "--set", f"data.root={root}", "--set", "data.batch_size=16"]
    assert main(["avqa", "train", "--out", str(out), *common, "--set", "optim.epochs=1"]) == 0
    printed = capsys.readouterr().out
    for key in ("Audio/Counting", "Visual/Location", "Audio-Visual/Temporal", "Audio-Visual/Avg", "All/Avg"):
        assert f"\n  {key} " in printed
    assert main(["avqa", "train", "--out", str(out), *common, "--set", "optim.epochs=2", "--resume",
                 "--evaluate"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["avqa", "eval", "--checkpoint", str(out), "--split", "val", "--json", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results) == set(QA_COLUMNS)
    from avfast.train.config import ConfigError

    with pytest.raises(ConfigError, match="model.vocab_size=29"):
        main(["avqa", "train", "--out", str(tmp_path / "r2"), *common, "--set", "model.vocab_size=10"])


REPO = Path(__file__).parent.parent.parent


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for d in ("avqa", "ogm")
                                        for p in (REPO / "configs" / d).glob("*.yaml")))
def test_seed_003_configs_load_and_build(path):
    from avfast.train.config import load_config
    from avfast.train.family import get_family

    family = path.split("/")[1]
    cfg = load_config(REPO / path, [], family=family)
    get_family(family).build_model(cfg)
    if family == "avqa" and "demo" not in path:
        assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size, cfg.loss.match_weight) == ("adam", 1e-4, 64, 0.5)
    if family == "ogm" and "demo" not in path:
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.step_size,
                cfg.optim.gamma, cfg.optim.epochs, cfg.data.batch_size) == ("sgd", 1e-3, 0.9, 1e-4, 70, 0.1, 100, 64)
