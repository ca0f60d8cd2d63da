"""Tiled contrastive loss in plain torch: O(B) memory, recomputation in backward.

The ``chunked`` backend of ``avfast.ops.contrastive_loss`` and the block primitives of the ``ring``
gather mode. Rows of ``x`` (M, D) are scored against a block of columns ``y`` (N, D) whose global
column index starts at ``col0``; row i of ``x`` has global index ``row0 + i`` and its positive is the
column with the same global index. ``x`` is processed in chunks of rows, so at most
``chunk x N`` logits exist at a time; column statistics are merged across chunks with log-add-exp.

Per-row partial statistics of one block (``PARTS`` columns):
    infonce: [lse of the biased logits, positive logit, sum of valid biased logits, valid count]
    siglip:  [sum of the pair terms, 0, 0, 0]
Partials of several blocks merge with ``merge_parts`` and turn into losses with ``finish_parts``.
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F

PARTS = 4
_TILE_ELEMENTS = 1 << 22  # logits per chunk (16 MiB in float32): few, large ops (OpenMP barriers are costly on busy cores)


class PairIds(NamedTuple):
    """Ids of the rows (``x_*``) and of the column block (``y_*``); None when not given."""

    x_pos: torch.Tensor | None
    y_pos: torch.Tensor | None
    x_src: torch.Tensor | None
    y_src: torch.Tensor | None

    def rows(self, r0: int, r1: int) -> "PairIds":
        cut = lambda t: None if t is None else t[r0:r1]
        return PairIds(cut(self.x_pos), self.y_pos, cut(self.x_src), self.y_src)


def chunk_rows(n_cols: int, n_rows: int) -> int:
    """Rows per chunk so that one chunk holds about ``_TILE_ELEMENTS`` logits (16..1024)."""
    rows = max(16, min(1024, _TILE_ELEMENTS // max(n_cols, 1)))
    return max(1, min(rows, n_rows))


class _Tile(NamedTuple):
    logits: torch.Tensor          # (c, n) biased, masked logits (-inf where removed), float32
    di: torch.Tensor              # rows of the tile holding their positive
    dj: torch.Tensor              # ... and its column
    removed: torch.Tensor | None  # (c, n) bool: same positive id, off-diagonal
    hard: torch.Tensor | None     # (c, n) bool: same source, different positive id


def _tile(x, y, scale, bias, ids: PairIds, row0, col0, log_w, kind) -> _Tile:
    """Logits of one chunk of rows against the column block, with the ids rules applied."""
    c, n = x.shape[0], y.shape[0]
    logits = torch.mm(x * scale, y.T)
    rows = torch.arange(row0, row0 + c, device=x.device)
    inside = (rows >= col0) & (rows < col0 + n)
    di = inside.nonzero().squeeze(1)
    dj = rows[di] - col0
    removed = hard = None
    if ids.x_pos is not None:
        removed = ids.x_pos[:, None] == ids.y_pos[None, :]
        removed[di, dj] = False
    if ids.x_src is not None and log_w != 0.0:
        hard = ids.x_src[:, None] == ids.y_src[None, :]
        hard[di, dj] = False
        if removed is not None:
            hard &= ~removed
    if kind == "infonce":
        if hard is not None:
            logits.add_(hard, alpha=log_w)
        if removed is not None:
            logits.masked_fill_(removed, -math.inf)
    elif bias is not None:
        logits.add_(bias)
    return _Tile(logits, di, dj, removed, hard)


def _weighted(values: torch.Tensor, t: _Tile, log_w: float) -> torch.Tensor:
    """``values`` with same-source pairs times exp(log_w) and removed pairs zeroed (in place)."""
    if t.hard is not None:
        values[t.hard] *= math.exp(log_w)
    if t.removed is not None:
        values.masked_fill_(t.removed, 0)
    return values


def _siglip(t: _Tile, log_w: float, *, derivative: bool) -> torch.Tensor:
    z = t.logits
    pos = z[t.di, t.dj]
    if derivative:
        out = torch.sigmoid(z)
        out[t.di, t.dj] = -torch.sigmoid(-pos)
    else:
        out = F.softplus(z)
        out[t.di, t.dj] = F.softplus(-pos)
    return _weighted(out, t, log_w)


def _infonce_parts(t: _Tile, dim: int, smoothing: float) -> torch.Tensor:
    """(lse, positive, valid sum, valid count) along ``dim`` of one tile: (c or n, 4)."""
    z = t.logits
    length = z.shape[dim]
    other = z.shape[1 - dim]
    parts = z.new_zeros(other, PARTS)
    parts[:, 0] = torch.logsumexp(z, dim)
    parts[t.di if dim == 1 else t.dj, 1] = z[t.di, t.dj]
    if t.removed is not None:
        parts[:, 3] = length - t.removed.sum(dim)
    else:
        parts[:, 3] = length
    if smoothing:
        valid = z if t.removed is None else z.masked_fill(t.removed, 0)
        parts[:, 2] = valid.sum(dim)
    return parts


def block_forward(x, y, scale, bias, ids: PairIds, row0: int, col0: int, log_w: float, smoothing: float,
                  kind: str, both: bool, fused: bool = False):
    """Partials of rows of ``x`` (M, D) against the block ``y`` (N, D): (M, 4) and (N, 4) or None.

    ``x``/``y`` are float32 (or float64); ``scale`` a 0-d tensor; ``bias`` a 0-d tensor or None.
    ``fused``: InfoNCE tiles through the C++ kernels ``avfast_C::contrastive_tile_*_cpu`` (float32).
    """
    m, n = x.shape[0], y.shape[0]
    row_parts = x.new_zeros(m, PARTS)
    col_parts = None
    if both:
        col_parts = x.new_zeros(n, PARTS)
        if kind == "infonce":
            col_parts[:, 0] = -math.inf
    step = chunk_rows(n, m)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        if fused:
            z, c = torch.mm(x[r0:r1] * scale, y.T), ids.rows(r0, r1)
            row_parts[r0:r1], p = torch.ops.avfast_C.contrastive_tile_fwd_cpu(
                z, c.x_pos, c.y_pos, c.x_src, c.y_src, row0 + r0 - col0, log_w, both)
            col_parts = merge_parts(col_parts, p, kind) if both else None
            continue
        t = _tile(x[r0:r1], y, scale, bias, ids.rows(r0, r1), row0 + r0, col0, log_w, kind)
        if kind == "infonce":
            row_parts[r0:r1] = _infonce_parts(t, 1, smoothing)
            if both:
                col_parts = merge_parts(col_parts, _infonce_parts(t, 0, smoothing), kind)
        else:
            terms = _siglip(t, log_w, derivative=False)
            row_parts[r0:r1, 0] = terms.sum(1)
            if both:
                col_parts[:, 0] += terms.sum(0)
    return row_parts, col_parts


def merge_parts(p: torch.Tensor, q: torch.Tensor, kind: str) -> torch.Tensor:
    """Partials of two disjoint column sets (or row sets) of the same rows, combined."""
    out = p + q
    if kind == "infonce":
        out[:, 0] = torch.logaddexp(p[:, 0], q[:, 0])
    return out


def finish_parts(parts: torch.Tensor, smoothing: float, kind: str):
    """(loss (M,), stats (M, 2) = [lse, valid count]) from complete partials."""
    if kind == "siglip":
        return parts[:, 0].clone(), torch.zeros_like(parts[:, :2])
    lse, pos, total, count = parts.unbind(1)
    loss = lse - (1.0 - smoothing) * pos
    if smoothing:
        loss = loss - smoothing * total / count
    return loss, torch.stack([lse, count], 1)


def _infonce_grad(t: _Tile, g, stats, dim: int, smoothing: float) -> torch.Tensor:
    """d loss / d logits of one direction: g * (softmax - (1-eps) onehot - eps/K valid)."""
    lse, count = stats[:, 0], stats[:, 1]
    shape = (-1, 1) if dim == 1 else (1, -1)
    d = (t.logits - lse.view(shape)).exp_().mul_(g.view(shape))
    idx = t.di if dim == 1 else t.dj
    d[t.di, t.dj] -= (1.0 - smoothing) * g[idx]
    if smoothing:
        d.sub_((smoothing * g / count).view(shape))
        if t.removed is not None:
            d.masked_fill_(t.removed, 0)
    return d


def _tile_grad(x, y, scale, bias, ids, row0, col0, log_w, smoothing, kind, g_row, row_stats, g_col, col_stats):
    """d (sum g_row * row_loss [+ sum g_col * col_loss]) / d logits of one chunk (torch ops)."""
    t = _tile(x, y, scale, bias, ids, row0, col0, log_w, kind)
    if kind == "siglip":
        d = _siglip(t, log_w, derivative=True)
        return d.mul_(g_row[:, None] if g_col is None else g_row[:, None] + g_col[None, :])
    d = _infonce_grad(t, g_row, row_stats, 1, smoothing)
    if g_col is not None:
        d += _infonce_grad(t, g_col, col_stats, 0, smoothing)
    return d


def block_backward(x, y, scale, bias, ids: PairIds, row0: int, col0: int, log_w: float, smoothing: float,
                   kind: str, g_row, row_stats, g_col=None, col_stats=None, fused: bool = False):
    """Gradients of ``sum(g_row * row_loss) [+ sum(g_col * col_loss)]`` over one block.

    Returns (grad_x (M, D), grad_y (N, D), grad_scale 0-d, grad_bias 0-d), float32. The column
    direction (``g_col``) is only meaningful for the full square problem (``both``).
    """
    m, n = x.shape[0], y.shape[0]
    grad_x = torch.empty_like(x)
    grad_y = torch.zeros_like(y)
    grad_scale = x.new_zeros(())
    grad_bias = x.new_zeros(())
    step = chunk_rows(n, m)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        if fused:
            z, c = torch.mm(x[r0:r1] * scale, y.T), ids.rows(r0, r1)
            d = torch.ops.avfast_C.contrastive_tile_bwd_cpu(
                z, c.x_pos, c.y_pos, c.x_src, c.y_src, row0 + r0 - col0, log_w, smoothing, g_row[r0:r1],
                row_stats[r0:r1], g_col, col_stats)
        else:
            d = _tile_grad(x[r0:r1], y, scale, bias, ids.rows(r0, r1), row0 + r0, col0, log_w, smoothing, kind,
                           g_row[r0:r1], row_stats[r0:r1], g_col, col_stats)
            if kind == "siglip":
                grad_bias += d.sum()
        gx = torch.mm(d, y)
        grad_scale += (gx * x[r0:r1]).sum()
        grad_x[r0:r1] = gx
        grad_y.addmm_(d.T, x[r0:r1])
    return grad_x.mul_(scale), grad_y.mul_(scale), grad_scale, grad_bias


def no_autocast(fn):
    """Run ``fn`` with autocast off: tiles are computed in the accumulation dtype, whatever the context."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


@no_autocast
def forward(x, y, scale, bias, ids: PairIds, offset: int, log_w: float, smoothing: float, both: bool, kind: str,
            fused: bool = False):
    """The ``chunked`` (``cpp`` with ``fused``) backend's forward: (row_loss, col_loss, row_stats, col_stats)."""
    x32, y32 = _acc(x), _acc(y)
    row_parts, col_parts = block_forward(x32, y32, scale.to(x32.dtype), _opt(bias, x32), ids, offset, 0,
                                         log_w, smoothing, kind, both, fused)
    row_loss, row_stats = finish_parts(row_parts, smoothing, kind)
    if both:
        col_loss, col_stats = finish_parts(col_parts, smoothing, kind)
    else:
        col_loss, col_stats = row_loss.new_zeros(0), row_stats.new_zeros(0, 2)
    return row_loss, col_loss, row_stats, col_stats


@no_autocast
def backward(g_row, g_col, x, y, scale, bias, ids: PairIds, row_stats, col_stats, offset: int, log_w: float,
             smoothing: float, both: bool, kind: str, fused: bool = False):
    """The ``chunked`` (``cpp`` with ``fused``) backend's backward: (grad_x, grad_y, grad_scale, grad_bias)."""
    x32, y32 = _acc(x), _acc(y)
    gx, gy, gs, gb = block_backward(x32, y32, scale.to(x32.dtype), _opt(bias, x32), ids, offset, 0, log_w,
                                    smoothing, kind, g_row.to(x32.dtype), row_stats,
                                    g_col.to(x32.dtype) if both else None, col_stats if both else None, fused)
    return gx.to(x.dtype), gy.to(y.dtype), gs.to(scale.dtype), gb


def _acc(t: torch.Tensor) -> torch.Tensor:
    """The accumulation dtype copy: float32 for half types and float32, float64 kept."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _opt(t, like):
    return None if t is None else t.to(like.dtype)


# The ``cpp`` backend: the same chunk loop with the C++ tile kernels (InfoNCE, float32 accumulation).
CPP = SimpleNamespace(forward=functools.partial(forward, fused=True), backward=functools.partial(backward, fused=True))
