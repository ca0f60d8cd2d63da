"""A tiny dub model and a fixed batch of quadruples (importable by spawned processes)."""
from __future__ import annotations

import torch

from avfast.train.config import config_from_dict
from avfast.train.data import TensorSource
from avfast.train.factory import build_model


def dub_config(variant: str = "multilingual", norm: str = "batch", **optim):
    return config_from_dict({
        "model": {"video": None if variant == "audio_only" else "x3d_tiny", "audio": "acoustic_resnet_tiny",
                  "embed_dim": 32, "norm": norm, "video_kwargs": {}},
        "data": {"variant": variant},
        "optim": {"lr": 3e-3, "epochs": 10, "warmup_epochs": 0, **optim},
        "train": {"progress": False, "log_every": 1, "keep_checkpoints": 0}})


def dub_model(cfg, seed: int = 0):
    return build_model(cfg, seed)


def quadruples(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(n, 3, 4, 32, 32, generator=g), "video_s": torch.randn(n, 3, 4, 32, 32, generator=g),
            "audio": torch.randn(n, 2, 32, 40, generator=g), "audio_s": torch.randn(n, 2, 32, 40, generator=g),
            "source": torch.arange(n) // 4}


def dub_source(batch_size: int = 8, rank: int = 0, world_size: int = 1, n: int = 16) -> TensorSource:
    return TensorSource(quadruples(n), batch_size, seed=3, rank=rank, world_size=world_size)
