"""Collectives of ``contrastive_loss(gather="all_gather" | "ring")``.

Conventions: every rank of ``group`` holds the same number B of rows; the global batch is the ranks'
rows concatenated in rank order, so rank r's row i has global index ``r * B + i`` and its positive is
the global column with that index. Each rank scores its own rows against all columns (a -> b) and
its own columns against all rows (b -> a, as the rows of ``b`` against all of ``a``); summed over
ranks that is the single-process loss, and the gradients of other ranks' embeddings flow back to
them, so DDP's gradient averaging reproduces the single-process gradients.

- ``all_gather_with_grad``: all-gather whose backward sums the gradients of every rank's copy
  (all-reduce) and keeps this rank's slice. Memory per rank: the gathered (W B, D) embeddings plus
  what the backend needs for (B, W B) logits (``chunked``/``triton``: O(B)).
- ``RingContrastive``: Inf-CL-style ring: key blocks (and their ids) travel rank to rank; every rank
  merges the block partials of its rows with log-add-exp; in backward the key blocks travel again
  with their gradient accumulator, which arrives home after W hops. No rank holds all keys.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from avfast.ops import _contrastive_chunked as chunked
from avfast.ops._contrastive_chunked import PairIds


_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def world(group=None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _check_equal_batches(n: int, group) -> None:
    sizes = torch.tensor([n], dtype=torch.long)
    if dist.get_backend(group) == "nccl":
        sizes = sizes.cuda()
    gathered = [torch.zeros_like(sizes) for _ in range(world(group)[1])]
    dist.all_gather(gathered, sizes, group=group)
    counts = [int(s) for s in gathered]
    if len(set(counts)) != 1:
        raise ValueError(f"contrastive_loss(gather=...): every rank needs the same local batch size, got {counts}")


def all_gather_ids(t: torch.Tensor | None, group) -> torch.Tensor | None:
    """(W B,) ids of every rank, no gradient; None passes through."""
    if t is None:
        return None
    out = t.new_empty((world(group)[1] * t.shape[0],) + tuple(t.shape[1:]))
    _ALL_GATHER(out, t.contiguous(), group=group)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_ids(x, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        rank, size = world(ctx.group)
        n = grad.shape[0] // size
        dist.all_reduce(grad, group=ctx.group)
        return grad[rank * n:(rank + 1) * n], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """(B, D) per rank -> (W B, D); the backward returns the sum over ranks of this slice's gradient."""
    return _AllGatherWithGrad.apply(x, group)


def _p2p_ring(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Send ``tensors`` to the next rank, receive the previous rank's (same shapes)."""
    rank, size = world(group)
    nxt = dist.get_global_rank(group, (rank + 1) % size) if group is not None else (rank + 1) % size
    prv = dist.get_global_rank(group, (rank - 1) % size) if group is not None else (rank - 1) % size
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, prv, group) for r in received]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


def _block_ids(x_pos, x_src, blk: list[torch.Tensor], has_pos: bool) -> PairIds:
    y_pos = blk[1] if has_pos else None
    y_src = blk[1 + has_pos] if x_src is not None else None
    return PairIds(x_pos, y_pos, x_src, y_src)


def _ring_start(x, y, scale, bias, pos, src, group):
    """(rank, size, x, scale, bias in the accumulation dtype, this rank's key block [y, pos?, src?])."""
    rank, size = world(group)
    x32 = chunked._acc(x)
    b = None if bias is None else bias.to(x32.dtype)
    return rank, size, x32, scale.to(x32.dtype), b, [chunked._acc(y)] + [t for t in (pos, src) if t is not None]


class RingContrastive(torch.autograd.Function):
    """Row losses of this rank's ``x`` (B, D) against every rank's ``y`` blocks, passed around a ring."""

    @staticmethod
    @chunked.no_autocast
    def forward(ctx, x, y, scale, bias, pos, src, log_w, smoothing, kind, group):
        rank, size, x32, s, b, blk = _ring_start(x, y, scale, bias, pos, src, group)
        n = x.shape[0]
        parts = None
        for step in range(size):
            col0 = ((rank - step) % size) * n
            ids = _block_ids(pos, src, blk, pos is not None)
            p, _ = chunked.block_forward(x32, blk[0], s, b, ids, rank * n, col0, log_w, smoothing, kind, False)
            parts = p if parts is None else chunked.merge_parts(parts, p, kind)
            if step < size - 1:
                blk = _p2p_ring(blk, group)
        loss, stats = chunked.finish_parts(parts, smoothing, kind)
        ctx.save_for_backward(x, y, scale, bias, pos, src, stats)
        ctx.settings = (log_w, smoothing, kind, group)
        return loss

    @staticmethod
    @chunked.no_autocast
    def backward(ctx, g):
        x, y, scale, bias, pos, src, stats = ctx.saved_tensors
        log_w, smoothing, kind, group = ctx.settings
        rank, size, x32, s, b, blk = _ring_start(x, y, scale, bias, pos, src, group)
        n = x.shape[0]
        g_travel = torch.zeros_like(blk[0])
        gx = torch.zeros_like(x32)
        gs, gb = x32.new_zeros(()), x32.new_zeros(())
        for step in range(size):
            col0 = ((rank - step) % size) * n
            ids = _block_ids(pos, src, blk, pos is not None)
            gxi, gyi, gsi, gbi = chunked.block_backward(x32, blk[0], s, b, ids, rank * n, col0, log_w, smoothing,
                                                        kind, g.to(x32.dtype), stats)
            gx += gxi
            g_travel += gyi
            gs += gsi
            gb += gbi
            if step < size - 1:
                *blk, g_travel = _p2p_ring(blk + [g_travel], group)
            else:
                (g_travel,) = _p2p_ring([g_travel], group)  # the last hop brings each block's gradient home
        grad_bias = None if bias is None else gb.to(bias.dtype)
        return gx.to(x.dtype), g_travel.to(y.dtype), gs.to(scale.dtype), grad_bias, None, None, None, None, None, None


def gathered_losses(fn, gather: str, group, a, b, scale, bias, pos, src, log_w: float, smoothing: float,
                    symmetric: bool, kind: str):
    """(row (B,), col (B,) or (0,)) of this rank's rows / columns against the whole global batch.

    ``fn`` is the backend's directional function (used by ``all_gather``; ``ring`` always uses the
    chunked block primitives). Without an initialised process group (or with one rank) this is the
    single-process loss.
    """
    rank, size = world(group)
    if size == 1:
        return fn(a, b, scale, bias, pos, pos, src, src, 0, log_w, smoothing, symmetric, kind)
    _check_equal_batches(a.shape[0], group)
    offset = rank * a.shape[0]
    if gather == "ring":
        row = RingContrastive.apply(a, b, scale, bias, pos, src, log_w, smoothing, kind, group)
        col = RingContrastive.apply(b, a, scale, bias, pos, src, log_w, smoothing, kind, group) if symmetric \
            else row.new_zeros(0)
        return row, col
    pos_all, src_all = all_gather_ids(pos, group), all_gather_ids(src, group)
    row, _ = fn(a, all_gather_with_grad(b, group), scale, bias, pos, pos_all, src, src_all, offset, log_w,
                smoothing, False, kind)
    if not symmetric:
        return row, row.new_zeros(0)
    col, _ = fn(b, all_gather_with_grad(a, group), scale, bias, pos, pos_all, src, src_all, offset, log_w,
                smoothing, False, kind)
    return row, col
