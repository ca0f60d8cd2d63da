"""Batched affinity top-k: the k most similar rows of ``y`` for every row of ``x``, without the B x N matrix.

Layout of this file: scoring operands and the exact selection rule shared by every backend, the
``torch`` reference, the gradient formula over the selected pairs (shared by every backend), the
custom op ``avfast::affinity_topk`` with fake and autograd, the backends' registrations and the
public ``affinity_topk``.

Selection rule (all backends): rank by score, ties by lower index; a NaN score ranks below every
number (it counts as ``-inf``); with ``exclude_self`` column ``i`` is never chosen for row ``i``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avfast._backend import FLOAT_DTYPES, cpp_op, cuda_op, register_backend, select, triton_backend
from avfast.ops._finite import first_nonfinite_row

__all__ = ["affinity_topk", "affinity_topk_reference"]

METRICS = ("cosine", "dot", "neg_l2")
WEIGHTS = ("softmax", "exp_softmax")
MAX_K = 1024
NORM_EPS = 1e-12            # F.normalize's eps: a zero row has cosine 0 with everything
FAST_DTYPES = {"bfloat16": torch.bfloat16}
_CHUNK_ELEMS = 1 << 22      # scores held at once by the reference (rows x columns of one block)
_IDX_SENTINEL = torch.iinfo(torch.int64).max


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision the scores are computed in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def candidates_for(k: int, n: int) -> int:
    """Candidates per row kept by the low-precision search before the exact re-rank: max(4k, 64) <= n."""
    return min(n, max(4 * k, 64))


def scoring_operands(x: torch.Tensor, y: torch.Tensor, metric: str, dtype: torch.dtype | None = None):
    """(a, b, bias) with score(i, j) = a_i . b_j + bias_j ranking exactly as ``metric`` does.

    x (G, B, D), y (G, N, D) -> a (G, B, D), b (G, N, D) in ``dtype`` (default ``work_dtype``),
    bias (G, N) float or None. cosine: unit rows; dot: as is; neg_l2: -|x - y|^2 = 2 (x.y - |y|^2 / 2)
    - |x|^2, so the score x.y - |y|^2 / 2 ranks the same (values are recomputed exactly).
    """
    wd = work_dtype(x.dtype)
    a, b = x.to(wd), y.to(wd)
    bias = None
    if metric == "cosine":
        a, b = F.normalize(a, dim=-1, eps=NORM_EPS), F.normalize(b, dim=-1, eps=NORM_EPS)
    elif metric == "neg_l2":
        bias = -0.5 * b.square().sum(-1)
    dtype = dtype or wd
    return a.to(dtype).contiguous(), b.to(dtype).contiguous(), bias


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (G, N, D) and idx (G, B, k) -> t's rows (G, B, k, D)."""
    G, B, k = idx.shape
    flat = idx.reshape(G, B * k, 1).expand(G, B * k, t.shape[-1])
    return torch.gather(t, 1, flat).view(G, B, k, t.shape[-1])


def pair_scores(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, metric: str) -> torch.Tensor:
    """The metric between x's rows (G, B, D) and their chosen rows of y (idx (G, B, k)) -> (G, B, k).

    Computed in ``work_dtype`` from the gathered rows (differentiable; O(B k D) memory).
    """
    wd = work_dtype(x.dtype)
    a, b = x.to(wd), gather_rows(y.to(wd), idx)
    if metric == "neg_l2":
        return -(a.unsqueeze(2) - b).square().sum(-1)
    if metric == "cosine":
        a, b = F.normalize(a, dim=-1, eps=NORM_EPS), F.normalize(b, dim=-1, eps=NORM_EPS)
    return (b @ a.unsqueeze(-1)).squeeze(-1)


def sort_topk(values: torch.Tensor, indices: torch.Tensor, k: int):
    """The k best of candidates (..., M) by (value desc, index asc); NaN counts as -inf."""
    values = torch.where(values.isnan(), float("-inf"), values)
    by_index = indices.sort(dim=-1, stable=True).indices
    values, indices = values.gather(-1, by_index), indices.gather(-1, by_index)
    order = values.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return values.gather(-1, order), indices.gather(-1, order)


def _select_k(scores: torch.Tensor, index: torch.Tensor, allowed: torch.Tensor | None, k: int):
    """The k best (value desc, index asc) of rows whose columns are in ascending index order.

    scores (R, M), index (R, M) or (M,), allowed (R, M) bool or None; every row has >= k allowed.
    topk finds the k-th value; when entries tie with it, the lowest indices among them are kept.
    """
    keyed = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
    top, pos = keyed.topk(k, dim=-1)
    kth = top[:, -1:]
    index = index.expand_as(scores) if index.dim() == 1 else index
    if not (torch.isinf(kth).any() or ((keyed >= kth).sum(-1) > k).any()):   # nothing ties with the k-th
        return sort_topk(top, index.gather(-1, pos), k)
    ok = torch.ones_like(scores, dtype=torch.bool) if allowed is None else allowed
    above = (keyed > kth) & ok
    tie = (keyed == kth) & ok
    need = k - above.sum(-1, keepdim=True)
    take = above | (tie & (tie.cumsum(-1) <= need))
    pos = take.nonzero()[:, 1].view(scores.shape[0], k)
    values, chosen = scores.gather(-1, pos), index.gather(-1, pos)
    order = values.sort(dim=-1, descending=True, stable=True).indices
    return values.gather(-1, order), chosen.gather(-1, order)


def _search(a, b, bias, k: int, exclude_self: bool):
    """Indices (G, B, k) of the k best scores a_i . b_j + bias_j, streaming blocks of b's rows.

    Memory: O(rows x block) with rows x block <= _CHUNK_ELEMS, plus O(B k).
    """
    G, B, _ = a.shape
    N = b.shape[1]
    block = min(N, max(2 * k + 2, _CHUNK_ELEMS // max(B, 1), 256))   # >= k + 1: k allowed in the first block
    score_dtype = work_dtype(a.dtype)
    rows = max(1, _CHUNK_ELEMS // block)
    out = torch.empty(G, B, k, dtype=torch.long, device=a.device)
    for g in range(G):
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            best_v = best_i = None
            for c0 in range(0, N, block):
                c1 = min(N, c0 + block)
                s = (a[g, r0:r1] @ b[g, c0:c1].T).to(score_dtype)
                if bias is not None:
                    s = s + bias[g, c0:c1].to(s.dtype)
                s = torch.where(s.isnan(), float("-inf"), s)
                cols = torch.arange(c0, c1, device=a.device)
                allowed = None
                if exclude_self:
                    allowed = cols[None, :] != torch.arange(r0, r1, device=a.device)[:, None]
                if best_v is not None:
                    by_index = best_i.sort(-1).indices   # running picks have lower indices than this block
                    s = torch.cat([best_v.gather(-1, by_index), s], 1)
                    cols = torch.cat([best_i.gather(-1, by_index), cols.expand(r1 - r0, -1)], 1)
                    if allowed is not None:
                        allowed = torch.cat([torch.ones_like(by_index, dtype=torch.bool), allowed], 1)
                best_v, best_i = _select_k(s, cols, allowed, k)
            out[g, r0:r1] = best_i
    return out


def rerank(x, y, candidates: torch.Tensor, k: int, metric: str, *, rows_per_block: int = 4096):
    """Exact (work_dtype) scores of candidate indices (G, B, c) -> the k best: values (G, B, k), indices.

    Used after a low-precision search; rows go in blocks so memory stays O(rows x c x D).
    """
    G, B, _ = candidates.shape
    values = torch.empty(G, B, k, dtype=work_dtype(x.dtype), device=x.device)
    indices = torch.empty(G, B, k, dtype=torch.long, device=x.device)
    for r0 in range(0, B, rows_per_block):
        r1 = min(B, r0 + rows_per_block)
        cand = candidates[:, r0:r1]
        s = pair_scores(x[:, r0:r1], y, cand, metric)
        values[:, r0:r1], indices[:, r0:r1] = sort_topk(s, cand, k)
    return values, indices


def affinity_topk_reference(x: torch.Tensor, y: torch.Tensor, k: int, metric: str = "cosine",
                            exclude_self: bool = False, compute_dtype: torch.dtype | None = None):
    """Plain-torch affinity top-k (ground truth): x (G, B, D), y (G, N, D) -> values (G, B, k), indices.

    Blocked mm + topk over y's rows (never the whole B x N matrix), ties by lower index, values by
    ``pair_scores`` (differentiable through torch autograd). ``compute_dtype=torch.bfloat16``:
    ``candidates_for(k, N)`` candidates from a bf16 search, re-ranked exactly.
    """
    with torch.no_grad():
        if compute_dtype is None:
            idx = _search(*scoring_operands(x, y, metric), k, exclude_self)
        else:
            c = candidates_for(k, y.shape[1] - int(exclude_self))
            cand = _search(*scoring_operands(x, y, metric, compute_dtype), c, exclude_self)
            idx = rerank(x, y, cand, k, metric)[1]
    return pair_scores(x, y, idx, metric).to(x.dtype), idx


# Gradient over the selected pairs (every backend) ----------------------------------------------


def _normalize_backward(v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient through F.normalize(v, dim=-1, eps=NORM_EPS) given the gradient of its output."""
    norm = v.norm(dim=-1, keepdim=True)
    clamped = norm.clamp_min(NORM_EPS)
    unit = v / clamped
    radial = (unit * grad).sum(-1, keepdim=True) * (norm > NORM_EPS)
    return (grad - unit * radial) / clamped


def scores_backward(x, y, idx, grad_values, metric: str):
    """Gradients (x (G, B, D), y (G, N, D)) of sum(grad_values * pair_scores(x, y, idx, metric)).

    Dense torch ops over the B k selected pairs; the sum into y's rows is an index_add_.
    """
    wd = work_dtype(x.dtype)
    a, b, g = x.to(wd), y.to(wd), grad_values.to(wd).unsqueeze(-1)
    if metric == "cosine":
        a, b = F.normalize(a, dim=-1, eps=NORM_EPS), F.normalize(b, dim=-1, eps=NORM_EPS)
    picked = gather_rows(b, idx)                                   # (G, B, k, D)
    if metric == "neg_l2":
        diff = a.unsqueeze(2) - picked
        grad_a, grad_picked = -2 * (g * diff).sum(2), 2 * g * diff
    else:
        grad_a, grad_picked = (g * picked).sum(2), g * a.unsqueeze(2)
    G, B, k = idx.shape
    N, D = b.shape[1:]
    # index_add_ (not a 3-D scatter_add_): serial on CPU, deterministic on CUDA under
    # torch.use_deterministic_algorithms(True), atomics otherwise.
    rows = (idx + N * torch.arange(G, device=idx.device).view(G, 1, 1)).reshape(-1)
    grad_b = torch.zeros(G * N, D, dtype=b.dtype, device=b.device).index_add_(0, rows, grad_picked.reshape(-1, D))
    grad_b = grad_b.view(G, N, D)
    if metric == "cosine":
        grad_a, grad_b = _normalize_backward(x.to(wd), grad_a), _normalize_backward(y.to(wd), grad_b)
    return grad_a.to(x.dtype), grad_b.to(y.dtype)


# Custom op -------------------------------------------------------------------------------------


@torch.library.custom_op("avfast::affinity_topk", mutates_args=())
def _affinity_topk_op(x: torch.Tensor, y: torch.Tensor, k: int, metric: str, exclude_self: bool,
                      compute_dtype: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    from avfast._backend import get_backend

    fast = FAST_DTYPES.get(compute_dtype)
    values, indices = get_backend("affinity_topk", backend).fn(x, y, k, metric, exclude_self, fast)
    return values.to(x.dtype).contiguous(), indices.contiguous()


@_affinity_topk_op.register_fake
def _(x, y, k, metric, exclude_self, compute_dtype, backend):
    shape = (x.shape[0], x.shape[1], k)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.long)


def _setup_context(ctx, inputs, output):
    x, y, _, metric, *_ = inputs
    ctx.metric = metric
    ctx.save_for_backward(x, y, output[1])


def _backward(ctx, grad_values, grad_indices):
    x, y, idx = ctx.saved_tensors
    if grad_values is None:
        return (None,) * 7
    gx, gy = scores_backward(x, y, idx, grad_values, ctx.metric)
    return gx, gy, None, None, None, None, None


_affinity_topk_op.register_autograd(_backward, setup_context=_setup_context)


# Backends --------------------------------------------------------------------------------------


@register_backend("affinity_topk", "torch", priority=0, dtypes=FLOAT_DTYPES, autograd=True,
                  description="blocked mm + topk over y's rows (reference)")
def _affinity_torch(x, y, k, metric, exclude_self, compute_dtype):
    return affinity_topk_reference(x, y, k, metric, exclude_self, compute_dtype)


def _finish(x, y, values, indices, metric):
    """Fused backends' kernel scores -> the metric's values (neg_l2 recomputed exactly)."""
    if metric == "neg_l2":
        return pair_scores(x, y, indices, metric), indices
    return values, indices


def _cpp_check(*tensors, k=1, **_):
    return [] if k <= MAX_K else [f"k={k} > {MAX_K}"]


@register_backend("affinity_topk", "cpp", priority=20, devices=("cpu",),
                  dtypes=(torch.float32, torch.float16, torch.bfloat16), autograd=True,
                  available=cpp_op("affinity_topk_cpu"), check=_cpp_check,
                  description="blocked GEMM (at::mm on 256 x 1024 blocks) + per-row running top-k (AVX-512 filter, "
                              "nth_element buffer), parallel over row blocks, and over column ranges merged "
                              "per row when queries are few; optional bf16 search + fp32 re-rank")
def _affinity_cpp(x, y, k, metric, exclude_self, compute_dtype):
    a, b, bias = scoring_operands(x, y, metric)
    empty = a.new_empty(0)
    bias = _or_empty(bias, a)
    if compute_dtype is None:
        values, indices = torch.ops.avfast_C.affinity_topk_cpu(a, b, empty, empty, bias, k, 0, exclude_self)
    else:
        c = candidates_for(k, y.shape[1] - int(exclude_self))
        values, indices = torch.ops.avfast_C.affinity_topk_cpu(
            a.to(compute_dtype), b.to(compute_dtype), a, b, bias, k, c, exclude_self)
    return _finish(x, y, values, indices, metric)


def _or_empty(bias, like):
    """``bias``, or the empty tensor (like's dtype and device) that stands for None in the C++/CUDA schemas."""
    return bias if bias is not None else like.new_empty(0)


def _triton_check(x, y, k=1, compute_dtype=None, **_):
    from avfast.kernels.affinity import MAX_TRITON_K

    slots = k if compute_dtype is None else candidates_for(k, y.shape[-2])
    if slots > MAX_TRITON_K:
        return [f"k={k} needs {slots} slots per row > {MAX_TRITON_K} (the Triton kernel keeps them in registers)"]
    return []


@triton_backend("affinity_topk", priority=30, dtypes=(torch.float32, torch.float16, torch.bfloat16),
                autograd=True, check=_triton_check,
                description="GEMM tiles + running top-k per row, split-N partials merged by a second kernel")
def _affinity_triton(x, y, k, metric, exclude_self, compute_dtype):
    from avfast.kernels.affinity import topk_scores

    a, b, bias = scoring_operands(x, y, metric, _triton_dtype(x.dtype, compute_dtype))
    if compute_dtype is None:
        return _finish(x, y, *topk_scores(a, b, bias, k, exclude_self), metric)
    c = candidates_for(k, y.shape[1] - int(exclude_self))
    cand = topk_scores(a, b, bias, c, exclude_self)[1]
    return rerank(x, y, cand, k, metric)


def _triton_dtype(dtype, compute_dtype):
    """GEMM operand dtype: compute_dtype, else fp16/bf16 inputs stay in their dtype (fp32 accumulate)."""
    if compute_dtype is not None:
        return compute_dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _cuda_check(*tensors, k=1, compute_dtype=None, **_):
    reasons = [] if k <= 32 else [f"k={k} > 32 (the CUDA kernel keeps a warp-sized candidate list)"]
    if compute_dtype is not None:
        reasons.append("compute_dtype=bfloat16 is not implemented in the CUDA kernel (use triton)")
    return reasons


@register_backend("affinity_topk", "cuda", priority=25, devices=("cuda",),
                  dtypes=(torch.float32, torch.float16, torch.bfloat16), autograd=True,
                  available=cuda_op("affinity_topk_cuda"), check=_cuda_check,
                  description="CUDA C++: fp32 tiled GEMM + per-row running top-k (k <= 32)")
def _affinity_cuda(x, y, k, metric, exclude_self, compute_dtype):
    a, b, bias = scoring_operands(x, y, metric)
    return _finish(x, y, *torch.ops.avfast_C.affinity_topk_cuda(a, b, _or_empty(bias, a), k, exclude_self), metric)


# Public function -------------------------------------------------------------------------------


def _validate(x, y, k, tau, metric, exclude_self, weights, values, compute_dtype):
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"affinity_topk: x must be a (B, D) or (G, B, D) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if y.dim() != x.dim():
        raise ValueError(f"affinity_topk: x {tuple(x.shape)} and y {tuple(y.shape)} must both be 2-D or both 3-D")
    if y.shape[-1] != x.shape[-1] or (x.dim() == 3 and y.shape[0] != x.shape[0]):
        raise ValueError(f"affinity_topk: x {tuple(x.shape)} and y {tuple(y.shape)} disagree on D or G")
    for name, t in (("x", x), ("y", y)) + ((("values", values),) if values is not None else ()):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"affinity_topk: {name} must be float16/bfloat16/float32/float64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"affinity_topk: {name} is on {t.device}, x on {x.device}")
    if y.dtype != x.dtype:
        raise TypeError(f"affinity_topk: x ({x.dtype}) and y ({y.dtype}) must have one dtype")
    if metric not in METRICS:
        raise ValueError(f"affinity_topk: metric must be one of {METRICS}, got {metric!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"affinity_topk: weights must be one of {WEIGHTS}, got {weights!r}")
    if not (isinstance(tau, (int, float)) and tau > 0 and tau != float("inf")):
        raise ValueError(f"affinity_topk: tau must be a positive finite number, got {tau!r}")
    if exclude_self and y.shape != x.shape:
        raise ValueError(f"affinity_topk: exclude_self needs y=None or y of x's shape {tuple(x.shape)} "
                         f"(column i is row i's self), got y {tuple(y.shape)}")
    if y.shape[-2] == 0:
        raise ValueError(f"affinity_topk: y has no rows (N=0, y {tuple(y.shape)}): nothing to search")
    n = y.shape[-2] - int(exclude_self)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= min(n, MAX_K):
        extra = " minus the excluded self" if exclude_self else ""
        raise ValueError(f"affinity_topk: k must be an int in [1, min(N{extra}, {MAX_K})] = [1, {min(n, MAX_K)}], "
                         f"got k={k!r} with N={y.shape[-2]}")
    if values is not None and (values.dim() != y.dim() or values.shape[:-1] != y.shape[:-1]):
        raise ValueError(f"affinity_topk: values must be {tuple(y.shape[:-1])} + (Dv,) like y's rows, "
                         f"got {tuple(values.shape)}")
    if compute_dtype not in (None, torch.bfloat16):
        raise ValueError(f"affinity_topk: compute_dtype must be None or torch.bfloat16, got {compute_dtype!r}")
    if not torch.compiler.is_compiling():
        for name, t in (("x", x), ("y", y)):
            where = first_nonfinite_row(t)
            if where is not None:
                raise ValueError(f"affinity_topk: {name} has NaN or inf (first in row {where}); "
                                 "under torch.compile this check is skipped and NaN scores rank last")


def affinity_topk(x: torch.Tensor, y: torch.Tensor | None = None, k: int = 5, *, tau: float = 1.0,
                  metric: str = "cosine", exclude_self: bool = False, aggregate: bool = False,
                  weights: str = "softmax", values: torch.Tensor | None = None,
                  compute_dtype: torch.dtype | None = None, backend: str = "auto"):
    """For each row of ``x`` the ``k`` most similar rows of ``y``, without building the B x N matrix.

    .. devices:: CPU CUDA
    .. properties:: Autograd (values, aggregated; w.r.t. x, y, values) TorchScript-free torch.compile

    Args:
        x: queries (B, D) or batched (G, B, D); float32/float16/bfloat16 (float64 on ``torch``).
        y: gallery (N, D) or (G, N, D), same dtype; None means ``x`` (self-affinity).
        k: neighbours per row, 1 <= k <= min(N, 1024) (N - 1 with ``exclude_self``).
        tau: temperature of the aggregation weights.
        metric: ``"cosine"`` (unit rows, zero rows score 0), ``"dot"`` or ``"neg_l2"`` (-|x - y|^2).
        exclude_self: column i is never chosen for row i (needs y None or y of x's shape).
        aggregate: also return the weighted sum of the chosen rows of ``values`` (default y).
        weights: ``"softmax"``: softmax(S / tau) over the k; ``"exp_softmax"``: softmax(exp(S / tau))
            (the DCL code's counterfactual module).
        values: (N, Dv) or (G, N, Dv) rows aggregated instead of y's.
        compute_dtype: ``torch.bfloat16``: max(4k, 64) candidates from a bf16 search, re-ranked
            exactly in float32 (approximate: a true neighbour outside the candidates is missed).
        backend: ``"auto"``, ``"torch"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        values (..., B, k) in x's dtype, best first; indices (..., B, k) int64 into y's rows;
        with ``aggregate``, aggregated (..., B, Dv) in values' dtype.

    B = 0 gives empty results; N = 0 raises ValueError. Ties go to the lower index. NaN/inf in x or y raise ValueError (under torch.compile the check is
    skipped: NaN scores then rank below every number). Equivalent code (B x N memory)::

        S = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T   # cosine
        vals, idx = S.topk(k, dim=-1)
        w = torch.softmax(vals / tau, dim=-1)                     # or softmax(exp(vals / tau))
        aggregated = (w[..., None] * (y if values is None else values)[idx]).sum(-2)
    """
    y = x if y is None else y
    _validate(x, y, k, tau, metric, exclude_self, weights, values, compute_dtype)
    batched = x.dim() == 3
    x3, y3 = (x, y) if batched else (x.unsqueeze(0), y.unsqueeze(0))
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    impl = select("affinity_topk", x3, y3, backend=backend, k=k, needs_grad=needs_grad, metric=metric,
                  compute_dtype=compute_dtype)
    name = {torch.bfloat16: "bfloat16"}.get(compute_dtype, "")
    vals, idx = _affinity_topk_op(x3, y3, k, metric, exclude_self, name, impl.name)
    out = (vals, idx)
    if aggregate:
        source = y3 if values is None else (values if batched else values.unsqueeze(0))
        scores = vals.to(work_dtype(vals.dtype)) / tau
        w = torch.softmax(scores.exp() if weights == "exp_softmax" else scores, dim=-1)
        picked = gather_rows(source, idx).to(w.dtype)
        out = out + ((w.unsqueeze(-1) * picked).sum(-2).to(source.dtype),)
    return out if batched else tuple(t.squeeze(0) for t in out)
