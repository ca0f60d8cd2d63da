"""Seed 001's probes: metrics, validation carved from train, grid selection never on test, split readers."""
from __future__ import annotations

import pytest
import torch

from avfast.train import evaluate as ev
from avfast.train.evaluate import (carve_validation, linear_probe, mean_per_class_accuracy, mlp_probe, probe_task,
                                   read_split, top1_accuracy)


def test_accuracy_metrics_on_hand_made_tensors():
    pred = torch.tensor([0, 0, 0, 1, 2, 2])
    target = torch.tensor([0, 0, 0, 0, 2, 1])
    assert top1_accuracy(pred, target) == pytest.approx(100 * 4 / 6)
    # class 0: 3/4, class 1: 0/1, class 2: 1/1
    assert mean_per_class_accuracy(pred, target) == pytest.approx(100 * (0.75 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="shape"):
        top1_accuracy(pred, target[:3])


def _clusters(n_per=30, classes=4, dim=16, seed=0, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    return x, y


def test_carve_validation_per_class_and_disjoint():
    y = torch.tensor([0] * 10 + [1] * 5 + [2])
    fit, val = carve_validation(torch.arange(16), y, 0.2, seed=1)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == 16
    assert (y[val] == 0).sum() == 2 and (y[val] == 1).sum() == 1 and (y[val] == 2).sum() == 0
    fit, val = carve_validation(torch.arange(5), torch.arange(5), 0.2)  # one clip per class: a random share
    assert len(val) == 1 and len(fit) == 4


def test_probe_task_selects_on_validation_and_never_sees_test(monkeypatch):
    x, y = _clusters()
    ids = torch.arange(len(y)) * 7 + 3
    x = torch.cat([x, ids[:, None].float()], 1)  # a column holding each row's clip id
    test = torch.arange(len(y)) % 4 == 0
    fitted, scored = [], []
    real_fit = ev._fit_probe

    def spy(train_x, train_y, classes, **kw):
        fitted.append(set(train_x[:, -1].long().tolist()))
        probe = real_fit(train_x, train_y, classes, **kw)
        return lambda z: (scored.append(set(z[:, -1].long().tolist())), probe(z))[1]

    monkeypatch.setattr(ev, "_standardise", lambda *xs: list(xs))  # keep the id column readable
    monkeypatch.setattr(ev, "_fit_probe", spy)
    grid = ({"hidden": (32,), "lr": 1e-2}, {"hidden": (32,), "lr": 1e-6})
    out = probe_task(x, y, ids, ~test, test, mlp_grid=grid, mlp_epochs=30, linear_epochs=50, seed=0)
    train_ids, test_ids = set(ids[~test].tolist()), set(ids[test].tolist())
    split = out["split"]
    assert split["test"] == len(test_ids) and split["fit"] + split["val"] == len(train_ids)
    assert len(fitted) == len(ev.LINEAR_GRID) + len(grid)
    fit_ids = fitted[0]
    assert all(f == fit_ids for f in fitted) and len(fit_ids) == split["fit"] and fit_ids < train_ids
    val_ids = train_ids - fit_ids
    # every grid point is scored on validation only; the two chosen probes once on test
    assert [s for s in scored if s != val_ids] == [test_ids, test_ids]
    assert out["mlp"]["params"]["lr"] == 1e-2  # the useful learning rate wins on validation


def test_probe_task_accuracy_and_overlap_refused():
    x, y = _clusters()
    ids = torch.arange(len(y))
    test = ids % 4 == 0
    out = probe_task(x, y, ids, ~test, test, mlp_grid=({"hidden": (32,), "lr": 1e-2},), mlp_epochs=30,
                     linear_epochs=50)
    for kind in ("linear", "mlp"):
        assert out[kind]["test_acc"] > 90 and out[kind]["test_mean_per_class"] > 90
    overlap = test.clone()
    overlap[1] = True  # clip 1 also in the training mask
    with pytest.raises(ValueError, match="overlap"):
        probe_task(x, y, ids, ~test, overlap)


def test_linear_and_mlp_probe_learn_separable_clusters():
    x, y = _clusters(n_per=20, classes=3)
    tr, te = torch.arange(len(y)) % 2 == 0, torch.arange(len(y)) % 2 == 1
    lin = linear_probe(x[tr], y[tr], x[te], y[te], epochs=50)
    mlp = mlp_probe(x[tr], y[tr], x[te], y[te], hidden=(32,), epochs=40, lr=1e-2)
    assert lin["test_acc"] > 90 and mlp["test_acc"] > 90 and lin["classes"] == mlp["classes"] == 3


def test_split_readers(tmp_path):
    esc = tmp_path / "esc50.csv"
    esc.write_text("filename,fold,target,category,esc10,src_file,take\n" + "".join(
        f"{f}-{i}-A-{i % 2}.wav,{f},{i % 2},{'dog' if i % 2 else 'rain'},False,{i},A\n" for f in range(1, 6) for i in range(4)))
    split = read_split(f"esc50:{esc}")
    assert len(split.folds) == 5 and len(split.labels) == 20
    for k, (train, test) in enumerate(split.folds, 1):
        assert len(test) == 4 and train.isdisjoint(test) and all(n.startswith(f"{k}-") for n in test)
    ucf = tmp_path / "ucfTrainTestlist"
    ucf.mkdir()
    (ucf / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nBiking/v_Biking_g09_c02.avi 2\n")
    (ucf / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    split = read_split(f"ucf101:{ucf}")
    (train, test), = split.folds
    assert test == {"v_ApplyEyeMakeup_g01_c01"} and split.labels["v_Biking_g09_c02"] == "Biking" and len(train) == 2
    vgg = tmp_path / "vggsound.csv"
    vgg.write_text('---g-Abxvw,30,"people marching",test\n--0PQM4-hqg,30,waterfall burbling,train\n')
    split = read_split(f"vggsound:{vgg}")
    (train, test), = split.folds
    assert test == {"---g-Abxvw_000030"} and split.labels["--0PQM4-hqg_000030"] == "waterfall burbling"
    with pytest.raises(ValueError, match="esc50:PATH"):
        read_split("hear:x")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="esc50.csv"):
        read_split(f"esc50:{bad}")
