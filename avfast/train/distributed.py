"""Process-group set-up and model wrapping for ``torchrun`` (NCCL on GPU, gloo on CPU).

``init_distributed()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``); without it the run is a single process and nothing is initialised.
A group initialised by the caller (tests, notebooks) is reused as is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "wrap_model", "unwrap_model", "all_gather_cat", "barrier",
           "all_reduce_sum", "destroy_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join (or create from torchrun's env) the default process group; pick this rank's device.

    ``device="auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. Backend: NCCL for CUDA,
    gloo for CPU.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu" if device == "auto" else device)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
        owns = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)
    return DistInfo(device=dev)


def destroy_distributed(info: DistInfo) -> None:
    """Tear down the group if ``init_distributed`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, *, fsdp: bool = False, sync_bn: bool = True) -> nn.Module:
    """DDP (or FSDP2 ``fully_shard`` per top-level child when ``fsdp``) over ``model`` when distributed.

    BatchNorm becomes SyncBatchNorm under DDP on GPU when ``sync_bn`` (SyncBatchNorm has no CPU
    kernel; on CPU each rank normalises its own batch, as the papers' per-GPU BN does).
    """
    if not info.distributed:
        return model
    if sync_bn and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for child in model.children():
            fully_shard(child)
        fully_shard(model)
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (``x`` itself when not distributed)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (N_r, ...) along dim 0, sizes may differ per rank (no gradient)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])
