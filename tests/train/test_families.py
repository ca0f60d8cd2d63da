"""One trainer for every model family: per-family config schema, optimisers, schedules, hooks,
periodic evaluation, early stopping, exact resume and the generic family commands."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import toy_family  # noqa: F401 - registers family "toy"
from avfast.train.config import ConfigError, config_from_dict, load_config
from avfast.train.family import Family, family_names, get_family, register_family
from avfast.train.optim import build_optimizer, build_scheduler
from avfast.train.run import add_family_commands, load_run, train_family
from avfast.train.schedule import lr_multiplier, warmup_cosine
from avfast.train.trainer import Trainer
from toy import toy_model, toy_objective, toy_source


def _toy(**sections):
    return config_from_dict({"family": "toy", **sections})


# ------------------------------------------------------------------------------------- config schema

def test_families_are_discovered_and_dub_is_the_default():
    assert "dub" in family_names() and "toy" in family_names()
    cfg = config_from_dict({})
    assert cfg.family == "dub" and type(cfg.model) is get_family("dub").model
    assert load_config("configs/demo.yaml").family == "dub"


def test_family_sections_and_defaults():
    cfg = _toy(model={"dropout": 0.1})
    assert type(cfg.model).__name__ == "ToyModelConfig" and cfg.model.dropout == 0.1
    assert type(cfg.eval).__name__ == "ToyEvalConfig"
    # the family's paper defaults for the shared sections, then the file's values win
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("sgd", 0.05, "step")
    assert _toy(optim={"lr": 0.2}).optim.lr == 0.2 and _toy(optim={"lr": 0.2}).optim.name == "sgd"


@pytest.mark.parametrize("data, message", [
    ({"model": {"shared_audio": True}}, "unknown key 'model.shared_audio'"),  # a dub key in the toy family
    ({"data": {"variant": "monolingual"}}, "unknown key 'data.variant'"),
    ({"family": "nope"}, "unknown family 'nope'"),
    ({"data": {"batch_size": 64}}, "data.batch_size 64 exceeds data.n 32"),
    ({"optim": {"name": "lamb"}}, "optim.name must be one of"),
    ({"optim": {"schedule": "multistep"}}, "optim.milestones"),
    ({"optim": {"schedule": "step", "step_size": 0}}, "optim.step_size out of range"),
    ({"optim": {"milestones": [30, 20]}}, "optim.milestones out of range"),
    ({"train": {"early_stopping_patience": 2}}, "train.eval_every"),
    ({"bogus": 1}, "unknown key 'bogus'"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"family": "toy", **data})


def test_load_config_for_a_command_refuses_another_family(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {dropout: 0.2}\n")
    assert load_config(path, family="toy").model.dropout == 0.2  # the file may omit family
    path.write_text("family: dub\n")
    with pytest.raises(ConfigError, match="this command trains family 'toy'"):
        load_config(path, family="toy")


def test_register_family_refuses_a_taken_name():
    dub = get_family("dub")
    with pytest.raises(ValueError, match="exists already"):
        register_family(Family(**{**dub.__dict__}))


# ------------------------------------------------------------------------------ optimisers, schedules

def test_optimisers_follow_the_config():
    model = toy_model()
    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        opt = build_optimizer(model, _toy(optim={"name": name, "momentum": 0.8, "nesterov": True}).optim)
        assert type(opt) is cls
    sgd = build_optimizer(model, _toy(optim={"momentum": 0.8, "weight_decay": 1e-4}).optim)
    assert sgd.defaults["momentum"] == 0.8 and len(sgd.param_groups) == 1  # decay_1d: one group
    adamw = build_optimizer(model, config_from_dict({}).optim)
    assert [g["weight_decay"] for g in adamw.param_groups] == [5e-2, 0.0]  # no decay on biases
    model.net[0].requires_grad_(False)
    frozen = build_optimizer(model, config_from_dict({}).optim)
    assert sum(p.numel() for g in frozen.param_groups for p in g["params"]) == 16 * 2 + 2  # only the head


def _lrs(optim: dict, steps_per_epoch: int = 2, total: int = 12) -> list[float]:
    cfg = _toy(optim={"lr": 1.0, "epochs": total / steps_per_epoch, **optim})
    model = toy_model()
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, total, steps_per_epoch)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_equal_their_formulas():
    # step: every 2 epochs (4 steps) x 0.1, counted from step 0 like torch's StepLR
    assert _lrs({"schedule": "step", "step_size": 2}) == pytest.approx([1] * 4 + [0.1] * 4 + [0.01] * 4)
    # multistep at epochs 1 and 4 (steps 2 and 8), gamma 0.5
    assert _lrs({"schedule": "multistep", "milestones": [1, 4], "gamma": 0.5}) == pytest.approx(
        [1, 1] + [0.5] * 6 + [0.25] * 4)
    # warm-up (1 epoch = 2 steps) then constant
    assert _lrs({"schedule": "constant", "warmup_epochs": 1}) == pytest.approx([0.5] + [1.0] * 11)
    # cosine with warm-up is seed 001's warmup_cosine
    got = _lrs({"schedule": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.1})
    assert got == pytest.approx([warmup_cosine(s, 12, 2, 0.1) for s in range(12)])
    # warm-up multiplies the step decay
    assert lr_multiplier(0, schedule="step", total_steps=8, warmup_steps=4, every=2, gamma=0.5) == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------- hooks

class _Recorder:
    def __init__(self, scale: float = 1.0):
        self.calls, self.scale = [], scale

    def after_backward(self, trainer, aux):
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        self.calls.append((trainer.step, aux, grads))
        for p in trainer.model.parameters():
            p.grad.mul_(self.scale)
        return {"hook_value": 3.0}

    def on_epoch_end(self, trainer, metrics):
        return {"epoch_hook": float(trainer.epoch)}


def test_after_backward_hook_sees_aux_and_its_gradient_change_reaches_the_step():
    cfg = _toy(optim={"grad_accum": 2}, train={"max_steps": 1})
    batches = list(toy_source(batch_size=8).batches(0, 0))[:2]
    rec = _Recorder()
    trainer = Trainer(cfg, toy_model(), get_family("toy").build_objective(cfg, None), toy_source(), hooks=[rec],
                      log=lambda *_: None)
    loss, logs = trainer.train_step(batches)
    step, aux, grads = rec.calls[0]
    assert step == 0 and aux == [{"rows": 8}, {"rows": 8}] and logs["hook_value"] == 3.0
    # the hook saw the accumulated gradient of both micro-batches
    ref = toy_model()
    sum(toy_objective(ref, b)[0] / 2 for b in batches).backward()
    for g, p in zip(grads, ref.parameters()):
        torch.testing.assert_close(g, p.grad)
    # a hook that zeroes the gradients leaves every weight where it was (plain SGD, no weight decay)
    cfg = _toy(optim={"momentum": 0.0, "weight_decay": 0.0})
    frozen = Trainer(cfg, toy_model(), toy_objective, toy_source(), hooks=[_Recorder(scale=0.0)], log=lambda *_: None)
    before = [p.detach().clone() for p in frozen.model.parameters()]
    frozen.train_step(batches[:1])
    assert all(torch.equal(a, p) for a, p in zip(before, frozen.model.parameters()))


def test_hook_sees_unscaled_gradients_under_a_grad_scaler():
    cfg = _toy(optim={"momentum": 0.0, "weight_decay": 0.0})
    batch = next(toy_source().batches(0, 0))
    rec = _Recorder()
    trainer = Trainer(cfg, toy_model(), toy_objective, toy_source(), hooks=[rec], log=lambda *_: None)

    class _Scaler(torch.amp.GradScaler):  # a CPU stand-in with a large scale, as fp16 AMP uses
        def __init__(self):
            super().__init__("cpu", init_scale=1024.0, enabled=True)

    trainer.scaler = _Scaler()
    trainer.train_step([batch])
    ref = toy_model()
    toy_objective(ref, batch)[0].backward()
    for g, p in zip(rec.calls[0][2], ref.parameters()):
        torch.testing.assert_close(g, p.grad)


# -------------------------------------------------------------- evaluation, early stopping, resume

def test_early_stopping_stops_after_patience_and_keeps_the_best(tmp_path):
    cfg = _toy(optim={"epochs": 20}, train={"eval_every": 1, "early_stopping_patience": 2,
                                            "early_stopping_metric": "score", "early_stopping_mode": "max"})
    scores = iter([0.1, 0.5, 0.4, 0.45, 0.9, 0.9])
    trainer = Trainer(cfg, toy_model(), toy_objective, toy_source(), out_dir=tmp_path, hooks=[_Recorder()],
                      evaluate=lambda tr: {"score": next(scores)}, log=lambda *_: None)
    summary = trainer.train()
    assert summary["stopped_early"] and summary["best"] == 0.5
    assert [e["epoch"] for e in trainer.evaluations] == [1, 2, 3, 4]  # stopped after 2 evaluations without gain
    assert trainer.epoch == 3 and trainer.step == 4 * 4
    best = json.loads((tmp_path / "checkpoints" / "best" / "latest").read_text())
    assert best["step"] == 2 * 4  # saved when epoch 2 scored 0.5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["score"] for r in records if "score" in r] == [0.1, 0.5, 0.4, 0.45]
    assert [r["epoch_hook"] for r in records if "epoch_hook" in r] == [0.0, 1.0, 2.0, 3.0]


def test_early_stopping_metric_must_exist():
    cfg = _toy(train={"eval_every": 1, "early_stopping_patience": 1, "early_stopping_metric": "acc"})
    trainer = Trainer(cfg, toy_model(), toy_objective, toy_source(), evaluate=lambda tr: {"mse": 1.0},
                      log=lambda *_: None)
    with pytest.raises(KeyError, match="'acc' is not in the evaluation's results"):
        trainer.train()


def test_eval_every_needs_an_evaluate_function():
    with pytest.raises(ValueError, match="needs an evaluate function"):
        Trainer(_toy(train={"eval_every": 1}), toy_model(), toy_objective, toy_source(), log=lambda *_: None)


def test_train_family_resumes_exactly_with_sgd_and_step_schedule(tmp_path):
    cfg = _toy(model={"dropout": 0.3}, train={"checkpoint_every": 3})
    full = train_family(cfg, tmp_path / "a", evaluate_splits=("test",), log=lambda *_: None)
    assert full["test"]["split"] == "test" and math.isfinite(full["test"]["mse"])
    cut = _toy(model={"dropout": 0.3}, train={"checkpoint_every": 3, "max_steps": 6})
    train_family(cut, tmp_path / "b", evaluate_splits=(), log=lambda *_: None)
    resumed = train_family(cfg, tmp_path / "b", resume="latest", evaluate_splits=("test",), log=lambda *_: None)
    assert resumed["train"]["steps"] == full["train"]["steps"] == 16
    assert resumed["test"]["mse"] == full["test"]["mse"]  # bitwise: same weights after the same steps
    loss = lambda d: [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
                      if "loss" in json.loads(x)]
    assert loss("b")[-10:] == loss("a")[-10:]
    cfg2, model, state = load_run(tmp_path / "a")
    assert cfg2.family == "toy" and state["step"] == 16 and cfg2.optim.name == "sgd"


def test_family_commands_train_and_eval(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_family_commands(sub, "toy", "toy", "the toy family")
    args = parser.parse_args(["toy", "train", "--out", str(tmp_path / "run"), "--set", "optim.epochs=1",
                              "--device", "cpu"])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["train"]["steps"] == 4 and "mse" in report["test"]
    args = parser.parse_args(["toy", "eval", "--checkpoint", str(tmp_path / "run"), "--split", "val",
                              "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["split"] == "val"
    assert "val (step 4):" in capsys.readouterr().out


def _ddp_family(rank: int, world_size: int):
    import toy_family  # noqa: F401 - the spawned process registers the toy family again

    report = train_family(_toy(train={"max_steps": 5}), None, evaluate_splits=("test",), log=lambda *_: None)
    return report["test"]["mse"], report["train"]["loss"]


def test_train_family_under_two_process_gloo_matches_one_process():
    from helpers import spawn

    single = train_family(_toy(train={"max_steps": 5}), None, evaluate_splits=("test",), log=lambda *_: None)
    (mse0, loss0), (mse1, loss1) = spawn(_ddp_family, 2)
    assert mse0 == mse1, "ranks ended with different weights"
    assert mse0 == pytest.approx(single["test"]["mse"], rel=1e-5)
    assert loss0 == loss1 == pytest.approx(single["train"]["loss"], rel=1e-5)  # mean over ranks


def test_plateau_schedule_lowers_the_lr_after_patience_and_checkpoints_its_scale(tmp_path):
    cfg = _toy(optim={"schedule": "plateau", "plateau_patience": 2, "gamma": 0.1, "epochs": 7},
               train={"eval_every": 1, "early_stopping_metric": "score"})
    scores = iter([1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 1.0])
    lrs = []

    class _LR:
        def on_epoch_end(self, trainer, metrics):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    trainer = Trainer(cfg, toy_model(), toy_objective, toy_source(), out_dir=tmp_path, hooks=[_LR()],
                      evaluate=lambda tr: {"score": next(scores)}, log=lambda *_: None)
    trainer.train()
    assert lrs == pytest.approx([0.05, 0.05, 0.005, 0.005, 5e-4, 5e-4, 5e-4])
    resumed = Trainer(cfg, toy_model(), toy_objective, toy_source(), evaluate=lambda tr: {}, log=lambda *_: None)
    resumed.resume(tmp_path)
    assert resumed.scheduler.lr_lambdas[0].scale == pytest.approx(0.01)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="plateau"):
        _toy(optim={"schedule": "plateau"})
