"""A tiny regression task for trainer tests (importable by spawned processes)."""
from __future__ import annotations

import torch
from torch import nn

from avfast.train.config import Config, config_from_dict
from avfast.train.data import TensorSource


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


def toy_objective(model, batch):
    loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
    return loss, {"mse": loss.detach()}


def toy_tensors(n: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 6, generator=g)
    return {"x": x, "y": torch.stack([x[:, 0] * 2 - x[:, 1], x[:, 2].sin()], dim=1)}


def toy_config(**optim) -> Config:
    return config_from_dict({"optim": {"lr": 1e-2, "epochs": 4, "warmup_epochs": 1, **optim},
                             "train": {"progress": False, "log_every": 1, "keep_checkpoints": 0}})


def toy_model(seed: int = 0, dropout: float = 0.0) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(dropout)


def toy_source(batch_size: int = 8, rank: int = 0, world_size: int = 1) -> TensorSource:
    return TensorSource(toy_tensors(), batch_size, seed=7, rank=rank, world_size=world_size)
