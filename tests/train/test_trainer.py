"""Trainer: a step changes weights, loss falls, exact resume, gradient accumulation, 2-process DDP."""
from __future__ import annotations

import json
import math

import pytest
import torch

from avfast.train.distributed import init_distributed
from avfast.train.trainer import Trainer
from helpers import spawn
from toy import toy_config, toy_model, toy_objective, toy_source


def _weights(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_one_step_changes_weights_and_loss_falls_on_fixed_batch():
    cfg = toy_config(warmup_epochs=0)
    trainer = Trainer(cfg, toy_model(), toy_objective, toy_source(), log=lambda *_: None)
    batch = next(toy_source().batches(0, 0))
    before = _weights(trainer)
    losses = [trainer.train_step([batch])[0] for _ in range(8)]
    after = _weights(trainer)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "a training step left every weight unchanged"
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.85 * losses[0], losses


def test_resume_gives_the_same_next_losses_bitwise(tmp_path):
    cfg = toy_config()
    cfg.train.checkpoint_every = 3
    cfg.train.max_steps = 7  # crosses an epoch boundary (4 steps per epoch)
    full = Trainer(cfg, toy_model(dropout=0.3), toy_objective, toy_source(), out_dir=tmp_path / "a",
                   log=lambda *_: None)
    torch.manual_seed(99)
    full.train()
    assert len(full.history) == 7

    resumed = Trainer(cfg, toy_model(seed=5, dropout=0.3), toy_objective, toy_source(), out_dir=tmp_path / "b",
                      log=lambda *_: None)
    torch.manual_seed(1234)  # different global RNG: the checkpoint must restore it
    resumed.resume(tmp_path / "a" / "checkpoints" / "ckpt_00000003.pt")
    assert resumed.step == 3
    resumed.train()
    assert resumed.history == full.history[3:], (resumed.history, full.history)
    for a, b in zip(_weights(full), _weights(resumed)):
        assert torch.equal(a, b)
    records = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 8))
    assert all(r["clips_per_s"] > 0 and "lr" in r for r in records)


def test_gradient_accumulation_matches_the_full_batch():
    cfg_big, cfg_acc = toy_config(), toy_config(grad_accum=2)
    cfg_big.train.max_steps = cfg_acc.train.max_steps = 3
    big = Trainer(cfg_big, toy_model(), toy_objective, toy_source(batch_size=8), log=lambda *_: None)
    acc = Trainer(cfg_acc, toy_model(), toy_objective, toy_source(batch_size=4), log=lambda *_: None)
    big.train()
    acc.train()
    assert big.step == acc.step == 3
    assert big.steps_per_epoch == acc.steps_per_epoch == 4
    for a, b in zip(_weights(big), _weights(acc)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_schedule_warms_up_then_anneals():
    trainer = Trainer(toy_config(epochs=2, warmup_epochs=1), toy_model(), toy_objective, toy_source(),
                      log=lambda *_: None)
    lrs = []
    for _ in range(8):  # 4 steps per epoch: 4 warm-up steps, then 4 of half-cosine
        lrs.append(trainer.optimizer.param_groups[0]["lr"])  # the rate this step uses
        trainer.train_step([next(toy_source().batches(0, 0))])
    assert lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[4:] == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)])


def _ddp_run(rank: int, world_size: int, steps: int):
    info = init_distributed()
    cfg = toy_config()
    cfg.train.max_steps = steps
    trainer = Trainer(cfg, toy_model(), toy_objective, toy_source(rank=rank, world_size=world_size),
                      dist_info=info, log=lambda *_: None)
    trainer.train()
    return trainer.history, [p.detach().numpy().copy() for p in trainer.model.module.parameters()]  # no shm


def test_two_process_gloo_run_matches_one_process():
    cfg = toy_config()
    cfg.train.max_steps = 5
    single = Trainer(cfg, toy_model(), toy_objective, toy_source(), log=lambda *_: None)
    single.train()
    (h0, w0), (h1, w1) = spawn(_ddp_run, 2, args=(5,))
    # each rank's loss is the mean over its half of the global batch: their mean is the global loss
    torch.testing.assert_close(torch.tensor(h0) / 2 + torch.tensor(h1) / 2, torch.tensor(single.history),
                               atol=1e-6, rtol=1e-5)
    for a, b, c in zip(map(torch.from_numpy, w0), map(torch.from_numpy, w1), _weights(single)):
        assert torch.equal(a, b), "ranks diverged"
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)


class _ShortEpochs:
    """A source whose odd epochs end one batch early (as a same-source sampler's plan may)."""

    def __init__(self, source):
        self.source, self.steps_per_epoch, self.clips_per_batch = source, source.steps_per_epoch, source.clips_per_batch
        self.epochs = []

    def batches(self, epoch, start):
        self.epochs.append(epoch)
        for i, b in enumerate(self.source.batches(epoch, start), start):
            if epoch % 2 and i == self.steps_per_epoch - 1:
                return
            yield b

    def state_dict(self):
        return {}


def test_an_epoch_that_ends_early_moves_on_to_the_next():
    data = _ShortEpochs(toy_source())
    trainer = Trainer(toy_config(), toy_model(), toy_objective, data, log=lambda *_: None)
    summary = trainer.train()
    assert summary["steps"] == trainer.total_steps and trainer.epoch > 3
