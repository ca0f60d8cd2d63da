"""Data sources for the ``Trainer``: in-memory tensors, and manifests through ``avfast.data``.

Every call into ``avfast.data`` lives in this file. A source yields the epoch's micro-batches from
any position, so a resumed run skips consumed batches at the index level (nothing is decoded twice).
Batches are dicts with the keys the objective reads: ``video``, ``video_s`` (B, 3, T, H, W),
``audio_p``, ``audio_s`` (B, 2, n_mels, frames), ``source_id`` (B,) int64.
"""
from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["TensorSource"]


class TensorSource:
    """Shuffled batches of in-memory tensors, split across ranks.

    Args:
        tensors: name -> tensor ``(N, ...)``, all with the same ``N``.
        batch_size: global batch (all ranks together); each rank gets ``batch_size // world_size``
            consecutive rows of it, so N processes see exactly the one-process batch.
        seed: the shuffle of epoch ``e`` is ``randperm(N, generator=seed + e)``; ``shuffle=False``
            keeps the order.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tensors must share their first dimension; got {sizes}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        self.tensors, self.batch_size, self.seed, self.shuffle = tensors, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.n = next(iter(sizes.values()))
        self.steps_per_epoch = self.n // batch_size
        self.clips_per_batch = batch_size

    def batches(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        order = (torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                 if self.shuffle else torch.arange(self.n))
        local = self.batch_size // self.world_size
        for step in range(start, self.steps_per_epoch):
            rows = order[step * self.batch_size + self.rank * local:][:local]
            yield {k: v[rows] for k, v in self.tensors.items()}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "n": self.n, "batch_size": self.batch_size}
