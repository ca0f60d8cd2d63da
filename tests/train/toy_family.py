"""A toy model family (regression on TensorSource data) registered for the family/trainer tests."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avfast.train.config import ConfigError
from avfast.train.data import TensorSource
from avfast.train.family import Family, get_family, register_family
from toy import ToyModel, toy_objective, toy_tensors


@dataclass
class ToyModelConfig:
    dropout: float = 0.0


@dataclass
class ToyDataConfig:
    n: int = 32
    batch_size: int = 8


@dataclass
class ToyLossConfig:
    weight: float = 1.0


@dataclass
class ToyEvalConfig:
    splits: list = field(default_factory=lambda: ["val", "test"])


def _validate(cfg):
    if cfg.data.batch_size > cfg.data.n:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} exceeds data.n {cfg.data.n}")


def _objective(cfg, model):
    def objective(m, batch):
        loss, logs = toy_objective(m, batch)
        return cfg.loss.weight * loss, logs, {"rows": batch["x"].shape[0]}
    return objective


def _data(cfg, split, info):
    return TensorSource(toy_tensors(cfg.data.n), cfg.data.batch_size, seed=cfg.train.seed, rank=info.rank,
                        world_size=info.world_size)


def _evaluate(cfg, model, split, info):
    t = toy_tensors(cfg.data.n)
    return {"mse": float(torch.nn.functional.mse_loss(model(t["x"]), t["y"])), "split": split}


FAMILY = Family(name="toy", model=ToyModelConfig, data=ToyDataConfig, loss=ToyLossConfig, eval=ToyEvalConfig,
                build_model=lambda cfg: ToyModel(cfg.model.dropout), build_objective=_objective,
                build_data=_data, validate=_validate, evaluate=_evaluate,
                defaults={"optim": {"name": "sgd", "lr": 0.05, "schedule": "step", "step_size": 2,
                                    "warmup_epochs": 0, "epochs": 4, "decay_1d": True},
                          "train": {"progress": False, "log_every": 1}})

try:
    get_family("toy")
except ConfigError:
    register_family(FAMILY)
