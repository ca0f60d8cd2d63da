"""Same-source hard-negative contrastive loss (InfoNCE / SigLIP), tiled, O(B) memory, across ranks.

Public: ``contrastive_loss`` (dispatching op), ``contrastive_loss_reference`` (the plain-torch
ground truth). Backends: ``torch`` (full B x B logits, autograd by torch), ``chunked`` (row chunks,
recomputation in backward, never stores B x B), ``triton`` (fused tiles with online log-sum-exp).
The fused backends run behind the custom op ``avfast::contrastive_loss`` (fake + autograd, whose
backward is the custom op ``avfast::contrastive_loss_backward``). The collectives of
``gather="all_gather" | "ring"`` live in ``avfast/ops/_contrastive_dist.py``.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from avfast._backend import cpp_op, register_backend, select, triton_backend
from avfast._ext import cpu_avx512
from avfast.ops import _contrastive_chunked as chunked
from avfast.ops._contrastive_chunked import PairIds
from avfast.ops._finite import first_nonfinite_row

__all__ = ["contrastive_loss", "contrastive_loss_reference"]

OP = "contrastive_loss"
KINDS = ("infonce", "siglip")
REDUCTIONS = ("mean", "sum", "none")
GATHERS = ("none", "all_gather", "ring")


# Reference (ground truth) -------------------------------------------------------------------------


def _pair_masks(m: int, n: int, offset: int, x_pos, y_pos, x_src, y_src, device):
    """(diag, removed, hard) (M, N) bool: positive pairs, same-clip pairs, same-source negatives."""
    rows = torch.arange(m, device=device) + offset
    diag = rows[:, None] == torch.arange(n, device=device)[None, :]
    removed = torch.zeros_like(diag)
    if x_pos is not None:
        removed = (x_pos[:, None] == y_pos[None, :]) & ~diag
    hard = torch.zeros_like(diag)
    if x_src is not None:
        hard = (x_src[:, None] == y_src[None, :]) & ~diag & ~removed
    return diag, removed, hard


def _nll_rows(logits, diag, removed, smoothing: float):
    """Cross-entropy of each row against its diagonal target, label-smoothed over valid columns."""
    logp = logits.log_softmax(1)
    loss = -logp.masked_fill(~diag, 0).sum(1)
    if smoothing:
        uniform = -logp.masked_fill(removed, 0).sum(1) / (~removed).sum(1)
        loss = (1.0 - smoothing) * loss + smoothing * uniform
    return loss


@chunked.no_autocast
def _reference_directional(x, y, scale, bias, x_pos, y_pos, x_src, y_src, offset: int, log_w: float,
                           smoothing: float, both: bool, kind: str):
    """Full-logits losses of rows of ``x`` (M, D) vs columns ``y`` (N, D): (row (M,), col (N,) or (0,)).

    Row i's positive is column ``offset + i``. Computed in float32 (float64 for float64 inputs), autocast off.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    logits = scale.to(acc) * (x.to(acc) @ y.to(acc).T)
    diag, removed, hard = _pair_masks(x.shape[0], y.shape[0], offset, x_pos, y_pos, x_src, y_src, x.device)
    if kind == "infonce":
        biased = (logits + log_w * hard.to(acc)).masked_fill(removed, -math.inf)
        row = _nll_rows(biased, diag, removed, smoothing)
        col = _nll_rows(biased.T, diag.T, removed.T, smoothing) if both else logits.new_zeros(0)
        return row, col
    if bias is not None:
        logits = logits + bias.to(acc)
    sign = diag.to(acc) * 2 - 1
    weight = (1 + (math.exp(log_w) - 1) * hard.to(acc)).masked_fill(removed, 0)
    terms = -F.logsigmoid(sign * logits) * weight
    return terms.sum(1), (terms.sum(0) if both else logits.new_zeros(0))


def contrastive_loss_reference(a, b, *, tau=0.07, logit_scale=None, source_ids=None, source_weight=1.0,
                               positive_ids=None, symmetric=True, normalize=True, label_smoothing=0.0,
                               reduction="mean", kind="infonce", logit_bias=None, max_logit_scale=100.0):
    """Plain-torch ``contrastive_loss`` with the full (B, B) logits (single process); the ground truth."""
    _validate(a, b, tau, logit_scale, source_ids, source_weight, positive_ids, label_smoothing, reduction,
              kind, logit_bias, "none", max_logit_scale)
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    scale = _scale(tau, logit_scale, max_logit_scale, a.device)
    row, col = _reference_directional(a, b, scale, logit_bias, positive_ids, positive_ids, source_ids,
                                      source_ids, 0, math.log(source_weight), label_smoothing, symmetric, kind)
    return _reduce(row, col, symmetric, reduction)


# Custom op behind the fused backends --------------------------------------------------------------


def _impl(backend: str):
    """The module holding ``forward``/``backward`` of a fused backend."""
    if backend == "chunked":
        return chunked
    if backend == "cpp":
        return chunked.CPP
    if backend == "triton":
        from avfast.kernels import contrastive as kernels

        return kernels
    raise ValueError(f"contrastive_loss: {backend!r} is not a fused backend (chunked, cpp, triton)")


@torch.library.custom_op("avfast::contrastive_loss", mutates_args=())
def _contrastive_op(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
                    x_pos: Optional[torch.Tensor], y_pos: Optional[torch.Tensor], x_src: Optional[torch.Tensor],
                    y_src: Optional[torch.Tensor], offset: int, log_w: float, smoothing: float, both: bool,
                    kind: str, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_loss (M,), col_loss (N,) or (0,), row_stats (M, 2), col_stats (N, 2) or (0, 2)), float32."""
    ids = PairIds(x_pos, y_pos, x_src, y_src)
    return _impl(backend).forward(x, y, scale, bias, ids, offset, log_w, smoothing, both, kind)


@_contrastive_op.register_fake
def _contrastive_fake(x, y, scale, bias, x_pos, y_pos, x_src, y_src, offset, log_w, smoothing, both, kind, backend):
    m, n = x.shape[0], (y.shape[0] if both else 0)
    f32 = dict(dtype=torch.promote_types(x.dtype, torch.float32))
    return x.new_empty(m, **f32), x.new_empty(n, **f32), x.new_empty(m, 2, **f32), x.new_empty(n, 2, **f32)


@torch.library.custom_op("avfast::contrastive_loss_backward", mutates_args=())
def _contrastive_backward_op(g_row: torch.Tensor, g_col: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                             scale: torch.Tensor, bias: Optional[torch.Tensor], x_pos: Optional[torch.Tensor],
                             y_pos: Optional[torch.Tensor], x_src: Optional[torch.Tensor],
                             y_src: Optional[torch.Tensor], row_stats: torch.Tensor, col_stats: torch.Tensor,
                             offset: int, log_w: float, smoothing: float, both: bool, kind: str,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_y, grad_scale, grad_bias) of ``sum(g_row * row_loss) + sum(g_col * col_loss)``."""
    ids = PairIds(x_pos, y_pos, x_src, y_src)
    return _impl(backend).backward(g_row, g_col, x, y, scale, bias, ids, row_stats, col_stats, offset, log_w,
                                   smoothing, both, kind)


@_contrastive_backward_op.register_fake
def _contrastive_backward_fake(g_row, g_col, x, y, scale, bias, *rest):
    f32 = dict(dtype=torch.promote_types(x.dtype, torch.float32))
    return torch.empty_like(x), torch.empty_like(y), scale.new_empty(()), x.new_empty((), **f32)


_TENSOR_INPUTS = ("x", "y", "scale", "bias", "x_pos", "y_pos", "x_src", "y_src")
_SETTINGS = ("offset", "log_w", "smoothing", "both", "kind", "backend")


def _setup_context(ctx, inputs, output):
    (x, y, scale, bias, x_pos, y_pos, x_src, y_src), settings = inputs[:8], inputs[8:]
    ctx.settings = settings
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, y, scale, bias, x_pos, y_pos, x_src, y_src, output[2], output[3])


def _backward(ctx, g_row, g_col, _g_row_stats, _g_col_stats):
    x, y, scale, bias, x_pos, y_pos, x_src, y_src, row_stats, col_stats = ctx.saved_tensors
    gx, gy, gs, gb = _contrastive_backward_op(g_row, g_col, x, y, scale, bias, x_pos, y_pos, x_src, y_src,
                                              row_stats, col_stats, *ctx.settings)
    return (gx, gy, gs, gb if ctx.has_bias else None) + (None,) * (4 + len(_SETTINGS))


_contrastive_op.register_autograd(_backward, setup_context=_setup_context)


def _fused(backend: str):
    def directional(x, y, scale, bias, x_pos, y_pos, x_src, y_src, offset, log_w, smoothing, both, kind):
        out = _contrastive_op(x, y, scale, bias, x_pos, y_pos, x_src, y_src, offset, log_w, smoothing, both,
                              kind, backend)
        return out[0], out[1]

    directional.__name__ = f"_contrastive_{backend}"
    return directional


# Backends -----------------------------------------------------------------------------------------


def _tiled_only(*tensors, gather="none", **info):
    return ["gather='ring' passes key blocks through the chunked tile primitives"] if gather == "ring" else []


def _triton_check(a, b, gather="none", **info):
    reasons = _tiled_only(a, b, gather=gather)
    if a.shape[-1] > 1024:
        reasons.append(f"D = {a.shape[-1]} > 1024 (one tile row of D is kept in registers)")
    else:
        from avfast.kernels.contrastive import plan

        why = plan(a.shape[-1], a.dtype, a.device)[1]  # shared memory of the target's tiles
        if why:
            reasons.append(why)
    return reasons


def _cpp_check(a, b, gather="none", kind="infonce", **info):
    reasons = _tiled_only(a, b, gather=gather)
    if kind != "infonce":
        reasons.append(f"kind={kind!r}: the C++ tile kernels are InfoNCE only")
    return reasons


# Measured on CPU (fwd+bwd, D = 512, 1 thread): the full-logits reference beats the tiled paths up to
# B ~ 512 (B = 16: 0.37 vs 0.54 ms cpp; B = 256: 4.0 vs 5.1 ms chunked), where its B x B logits are small.
SMALL_CPU_LOGITS = 512 * 512


def _reference_priority(a, b, **info):
    small = a.device.type == "cpu" and a.shape[0] * b.shape[0] <= SMALL_CPU_LOGITS
    return 25 if small else 0


# Measured on CPU (fwd+bwd, D = 512, B = 512-8192, 2026-12-03, benchmarks/RESULTS.md): with its AVX-512
# exp `cpp` beats `chunked` (1.09-1.19x plain InfoNCE at B >= 2048, equal at 512; 1.33-1.71x with source /
# positive ids); without it
# (ATen's Vectorized<float>::exp is scalar libm expf in this extension) plain InfoNCE ran 1.22-1.32x
# faster on `chunked`, while ids still favoured `cpp` (1.01-1.16x).
def _cpp_priority(a, b, ids=False, **info):
    return 20 if ids or cpu_avx512() else 5


register_backend(OP, "torch", priority=_reference_priority, autograd=True, check=_tiled_only,
                 description="reference: full B x B logits, torch autograd")(_reference_directional)
register_backend(OP, "chunked", priority=10, autograd=True,
                 description="row chunks with online log-sum-exp; backward recomputes; O(B) memory")(_fused("chunked"))
register_backend(OP, "cpp", priority=_cpp_priority, autograd=True, devices=("cpu",),
                 dtypes=(torch.float16, torch.bfloat16, torch.float32), available=cpp_op("contrastive_tile_fwd_cpu"),
                 check=_cpp_check,
                 description="chunked loop (MKL matmuls) + fused C++ tile kernels (AVX-512 exp where the CPU has it); "
                             "without AVX-512 auto picks it only when source or positive ids are given")(_fused("cpp"))
triton_backend(OP, priority=30, autograd=True, dtypes=(torch.float16, torch.bfloat16, torch.float32),
               check=_triton_check,
               description="fused fwd + bwd tiles, online log-sum-exp, ids compared in-tile")(_fused("triton"))


# Public op ----------------------------------------------------------------------------------------


def _validate(a, b, tau, logit_scale, source_ids, source_weight, positive_ids, label_smoothing, reduction, kind,
              logit_bias, gather, max_logit_scale):
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"contrastive_loss: {name} must be a (B, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"contrastive_loss: {name} must be floating point, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"contrastive_loss: a and b must have the same shape (B, D), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.shape[1] == 0:
        raise ValueError(f"contrastive_loss: embeddings of dimension D=0 (shape {tuple(a.shape)})")
    if a.shape[0] == 0 and gather != "none":
        raise ValueError(f"contrastive_loss: an empty shard (B=0) cannot take part in gather={gather!r}; "
                         "every rank needs the same batch size")
    if a.device != b.device:
        raise ValueError(f"contrastive_loss: a and b on different devices ({a.device}, {b.device})")
    if not torch.compiler.is_compiling():
        for name, t in (("a", a), ("b", b)):
            where = first_nonfinite_row(t)
            if where is not None:
                raise ValueError(f"contrastive_loss: {name} has NaN or inf (first in row {where[0]}); "
                                 "under torch.compile this check is skipped")
    for name, ids in (("source_ids", source_ids), ("positive_ids", positive_ids)):
        if ids is None:
            continue
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool \
                or ids.is_complex():
            raise TypeError(f"contrastive_loss: {name} must be an integer tensor, got "
                            f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.shape != (a.shape[0],):
            raise ValueError(f"contrastive_loss: {name} must have shape ({a.shape[0]},) (one id per row), got "
                             f"{tuple(ids.shape)}")
        if ids.device != a.device:
            raise ValueError(f"contrastive_loss: {name} is on {ids.device}, embeddings on {a.device}")
    if logit_scale is None and not tau > 0:
        raise ValueError(f"contrastive_loss: tau must be > 0, got {tau}")
    if logit_scale is not None:
        if not isinstance(logit_scale, torch.Tensor) or logit_scale.numel() != 1:
            raise ValueError("contrastive_loss: logit_scale must be a one-element tensor (log of the scale)")
        if not max_logit_scale > 0:
            raise ValueError(f"contrastive_loss: max_logit_scale must be > 0, got {max_logit_scale}")
    if not source_weight > 0:
        raise ValueError(f"contrastive_loss: source_weight must be > 0 (1.0 = plain InfoNCE), got {source_weight}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"contrastive_loss: label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"contrastive_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if kind not in KINDS:
        raise ValueError(f"contrastive_loss: kind must be one of {KINDS}, got {kind!r}")
    if gather not in GATHERS:
        raise ValueError(f"contrastive_loss: gather must be one of {GATHERS}, got {gather!r}")
    if kind == "infonce" and logit_bias is not None:
        raise ValueError("contrastive_loss: logit_bias is for kind='siglip' (softmax is shift invariant)")
    if kind == "siglip" and label_smoothing:
        raise ValueError("contrastive_loss: label_smoothing applies to kind='infonce' only")
    if logit_bias is not None and (not isinstance(logit_bias, torch.Tensor) or logit_bias.numel() != 1):
        raise ValueError("contrastive_loss: logit_bias must be a one-element tensor")


def _scale(tau, logit_scale, max_logit_scale, device):
    """The multiplier of the cosine similarities on ``device``: exp(logit_scale) clamped, or 1 / tau.

    A ``logit_scale`` held on another device (a CPU parameter with CUDA embeddings) is moved with
    autograd, so the fused kernels get a pointer on their device and the gradient goes home.
    """
    if logit_scale is None:
        return torch.full((), 1.0 / tau, device=device)
    return logit_scale.reshape(()).to(device).exp().clamp(max=max_logit_scale)


def _reduce(row, col, symmetric: bool, reduction: str):
    per = (row + col) / 2 if symmetric else row
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    return per


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, *, tau: float = 0.07, logit_scale: torch.Tensor | None = None,
                     source_ids: torch.Tensor | None = None, source_weight: float = 1.0,
                     positive_ids: torch.Tensor | None = None, symmetric: bool = True, normalize: bool = True,
                     label_smoothing: float = 0.0, reduction: str = "mean", kind: str = "infonce",
                     logit_bias: torch.Tensor | None = None, gather: str = "none", group=None,
                     backend: str = "auto", max_logit_scale: float = 100.0) -> torch.Tensor:
    r"""Contrastive loss between paired embeddings with same-source hard negatives.

    .. devices:: CPU CUDA
    .. properties:: Autograd TorchCompile (gather="none"; the gather modes run eagerly)

    Row i of ``a`` is paired with row i of ``b`` (its only positive). With logits
    ``L = s * a @ b.T`` (``s = 1 / tau``, or ``exp(logit_scale)`` clamped to ``max_logit_scale``):

    - ``source_ids`` (B,): ``log(source_weight)`` is added to ``L[i, j]``, j != i, when rows i and j
      share a source (movie) and have different positive ids: same-source hard negatives weigh
      ``source_weight`` times an ordinary negative in the denominator.
    - ``positive_ids`` (B,): ``L[i, j]``, j != i, with the same positive id (dubs of one shot) are
      removed from the denominator (neither positive nor negative).
    - ``kind="infonce"``: row loss ``-log softmax(L)[i, i]`` (label-smoothed over the valid columns);
      ``symmetric`` averages it with the column (b -> a) loss per sample.
    - ``kind="siglip"``: ``sum_j -log sigmoid(z_ij (L[i, j] + logit_bias))``, z = +1 on the diagonal,
      -1 elsewhere; same-source negatives' terms are multiplied by ``source_weight``, removed pairs
      dropped; ``reduction="mean"`` divides the pair sum by B as SigLIP does.

    Equivalent reference code (one process, ``gather="none"``)::

        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        L = (a @ b.T) / tau                        # + log(w) on same-source pairs, -inf on removed
        loss = (F.cross_entropy(L, arange(B)) + F.cross_entropy(L.T, arange(B))) / 2

    Args:
        a, b: (B, D) embeddings, float16/bfloat16/float32/float64 (accumulation in float32).
        tau: temperature when ``logit_scale`` is None.
        logit_scale: one-element tensor holding log(scale) (CLIP-style, learnable; gets its gradient).
        source_ids, positive_ids: (B,) integer ids, or None.
        source_weight: > 0; 1.0 = plain InfoNCE.
        symmetric: average the a -> b and b -> a losses.
        normalize: L2-normalise a and b first.
        label_smoothing: in [0, 1), InfoNCE only.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per-sample losses (B,)).
        kind: ``"infonce"`` | ``"siglip"``.
        logit_bias: one-element tensor (SigLIP's learnable bias), or None (0).
        gather: ``"none"``; ``"all_gather"`` (every rank's embeddings gathered with gradient, this
            rank's rows against all columns); ``"ring"`` (key blocks passed rank to rank, no rank
            holds all keys). Each rank returns the loss of its own rows; the mean of the ranks'
            losses equals the loss of the concatenated batch (equal local batch sizes).
        group: the process group (default: the world).
        backend: ``"auto"`` | ``"torch"`` | ``"chunked"`` | ``"cpp"`` | ``"triton"``.
        max_logit_scale: upper clamp of ``exp(logit_scale)`` (CLIP: 100).

    Returns:
        float32 scalar, or (B,) for ``reduction="none"`` (float64 for float64 inputs). An empty batch
        (B = 0, e.g. an empty evaluation shard) gives 0 (``(0,)`` for ``"none"``).

    Raises:
        ValueError / TypeError: shapes, id lengths, dtypes or options that do not fit, naming them;
            NaN/inf in a or b, naming the first bad row (skipped under torch.compile).
        BackendError: an explicitly requested backend cannot serve the call.
    """
    _validate(a, b, tau, logit_scale, source_ids, source_weight, positive_ids, label_smoothing, reduction, kind,
              logit_bias, gather, max_logit_scale)
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    scale = _scale(tau, logit_scale, max_logit_scale, a.device)
    bias = logit_bias.reshape(()).to(a.device) if logit_bias is not None else None
    source_ids, positive_ids = (None if t is None else t.long() for t in (source_ids, positive_ids))
    if a.shape[0] == 0:  # an empty evaluation shard: no rows, zero loss (connected to the inputs' graphs)
        dt = torch.float64 if a.dtype == torch.float64 else torch.float32
        row = (a.sum(-1) + b.sum(-1)).to(dt) + scale.to(dt) * 0
        return _reduce(row, row, symmetric, "sum" if reduction == "mean" else reduction)
    impl = select(OP, a, b, backend=backend, gather=gather, kind=kind,
                  ids=source_ids is not None or positive_ids is not None)
    log_w = math.log(source_weight)
    if gather == "none":
        row, col = impl.fn(a, b, scale, bias, positive_ids, positive_ids, source_ids, source_ids, 0, log_w,
                           label_smoothing, symmetric, kind)
    else:
        from avfast.ops import _contrastive_dist as dist

        row, col = dist.gathered_losses(impl.fn, gather, group, a, b, scale, bias, positive_ids, source_ids,
                                        log_w, label_smoothing, symmetric, kind)
    return _reduce(row, col, symmetric, reduction)
