"""Cross-modal attention: few queries over many, padded keys (flash-style, per-sample lengths).

``cross_attention(q, k, v)`` = ``softmax(q k^T * scale + attn_bias + mask) v`` with GQA/MQA,
per-sample key lengths (``kv_lens``) or a boolean ``key_padding_mask``, an additive ``attn_bias``
and dropout drawn from a caller's generator. Rows whose keys are all masked give zeros (values and
gradients), never NaN.

Backends (``avfast.available_backends("cross_attention")``):

- ``torch``: plain PyTorch (scores materialised, computed in fp32/fp64); the ground truth.
- ``sdpa``: PyTorch's fused CPU flash-attention kernel (the ``scaled_dot_product_attention`` CPU
  path) with avfast's masks; no ``attn_bias`` gradient, no dropout.
- ``xformers``: ``xformers.ops`` memory-efficient attention on CUDA when xformers is installed.
- ``triton``: avfast's flash forward/backward (``avfast.kernels.attention``), CUDA; auto's first
  choice on GPUs.
- ``cuda``: a plain-CUDA forward for decode-like short queries (``csrc/cuda/attention.cu``),
  inference only, built with the CUDA extension.

No C++ CPU kernel exists for this op: CPU users get ``sdpa`` (fused) or ``torch``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch

from avfast._backend import cuda_op, get_backend, register_backend, select, triton_backend

__all__ = ["cross_attention", "cross_attention_reference"]

OP = "cross_attention"
MAX_HEAD_DIM = 256
SDPA_MAX_HEAD_DIM = 1024  # PyTorch's CPU flash kernel takes any head dim; AVST grounding uses 512


def _head_dim_reasons(q, limit: int = MAX_HEAD_DIM) -> list[str]:
    """Refusal of the fused kernels for a head dim they do not tile."""
    return [f"head dim {q.shape[-1]} > {limit}"] if q.shape[-1] > limit else []


# ------------------------------------------------------------------------------------- reference


def key_padding(kv_lens: torch.Tensor | None, key_padding_mask: torch.Tensor | None, lk: int) -> torch.Tensor | None:
    """(B, Lk) bool, True where a key is padding (past ``kv_lens[b]`` or marked in the mask)."""
    pad = None
    if kv_lens is not None:
        pad = torch.arange(lk, device=kv_lens.device)[None, :] >= kv_lens[:, None]
    if key_padding_mask is not None:
        pad = key_padding_mask if pad is None else pad | key_padding_mask
    return pad


def cross_attention_reference(q, k, v, *, kv_lens=None, key_padding_mask=None, attn_bias=None, scale=None,
                              dropout_mask=None, dropout_p=0.0):
    """Plain-autograd attention: returns ``(out (B, Hq, Lq, Dh), weights (B, Hq, Lq, Lk))``.

    ``weights`` are the softmax probabilities before dropout; ``dropout_mask`` (bool, True = keep,
    broadcastable to the weights) applies ``weights * mask / (1 - dropout_p)``. Padding keys are
    zeroed first (so NaN there cannot leak) and rows without any valid key give zeros.
    """
    b, hq, lq, dh = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    scale = dh ** -0.5 if scale is None else scale
    pad = key_padding(kv_lens, key_padding_mask, lk)
    if pad is not None:
        k = k.masked_fill(pad[:, None, :, None], 0)
        v = v.masked_fill(pad[:, None, :, None], 0)
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    s = q @ k.transpose(-1, -2) * scale
    if attn_bias is not None:
        s = s + attn_bias
    if pad is not None:
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    dead = (s == float("-inf")).all(-1, keepdim=True)
    weights = torch.softmax(s.masked_fill(dead, 0), dim=-1).masked_fill(dead, 0)
    p = weights if dropout_mask is None else weights * dropout_mask / (1 - dropout_p)
    return p @ v, weights


# ------------------------------------------------------------------------------------ backends


@dataclasses.dataclass(frozen=True)
class _Impl:
    """A backend's forward ``(q, k, v, kv_lens, kpm, bias, keep, scale, p) -> (out, lse)`` and
    backward ``(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale, p, bias_grad)
    -> (dq, dk, dv, dbias or None)``."""

    forward: Callable
    backward: Callable

    def __call__(self, *args):
        return self.forward(*args)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_to_shape(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``x`` (B, H, Lq, Lk) over the dimensions that ``shape`` broadcasts (the bias gradient)."""
    lead = x.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    return x.sum(dims, keepdim=True).reshape(shape) if dims else x.reshape(shape)


def _grouped(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """(B, Hq, ...) -> (B, Hkv, G, ...) view: q head h uses kv head h // G."""
    return x.unflatten(1, (hkv, x.shape[1] // hkv))


def _zero_padding(x, pad):
    """(B, H, Lk, Dh) with the padding keys set to 0 (so NaN there cannot reach a matmul)."""
    return x if pad is None else x.masked_fill(pad[:, None, :, None], 0)


def _cut_keys(k, v, kv_lens, kpm, bias, keep):
    """Keys and their masks cut at max(kv_lens), on CPU only (finding the max syncs a GPU)."""
    if kv_lens is None or k.device.type != "cpu":
        return k, v, kpm, bias, keep
    n = max(1, min(k.shape[2], int(kv_lens.max())))
    if n == k.shape[2]:
        return k, v, kpm, bias, keep
    cut = lambda t: t if t is None or t.shape[-1] == 1 else t[..., :n]  # noqa: E731
    return k[:, :, :n], v[:, :, :n], cut(kpm), cut(bias), cut(keep)


def _pad_keys(x: torch.Tensor, lk: int, dim: int) -> torch.Tensor:
    """Gradient of keys cut by ``_cut_keys``, zero-padded back to ``lk`` along ``dim``."""
    if x.shape[dim] == lk:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, lk - x.shape[dim]]
    return torch.nn.functional.pad(x, pad)


def _torch_probs(q, k, kv_lens, kpm, bias, scale, lse=None):
    """Probabilities (B, Hq, Lq, Lk) and lse (B, Hq, Lq) in the compute dtype; k padding zeroed.

    Given ``lse`` (backward), P is rebuilt from it instead of a fresh softmax.
    """
    ct = _lse_dtype(q.dtype)
    hkv, lk = k.shape[1], k.shape[2]
    pad = key_padding(kv_lens, kpm, lk)
    k = _zero_padding(k.to(ct), pad)
    s = (_grouped(q.to(ct), hkv) @ k[:, :, None].transpose(-1, -2)).flatten(1, 2) * scale
    if bias is not None:
        s = s + bias.to(ct)
    if pad is not None:
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    if lse is None:
        lse = torch.logsumexp(s, dim=-1)
    finite = lse.masked_fill(lse == float("-inf"), float("inf"))
    return torch.exp(s - finite[..., None]), lse, k


def _dropped(p, keep, dropout_p):
    return p if keep is None else p * keep / (1 - dropout_p)


def _torch_forward(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p):
    k, v, kpm, bias, keep = _cut_keys(k, v, kv_lens, kpm, bias, keep)
    p, lse, _ = _torch_probs(q, k, kv_lens, kpm, bias, scale)
    v = _zero_padding(v.to(p.dtype), key_padding(kv_lens, kpm, k.shape[2]))
    out = _grouped(_dropped(p, keep, dropout_p), k.shape[1]) @ v[:, :, None]
    return out.flatten(1, 2).to(q.dtype), lse


def _torch_backward(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale, dropout_p, bias_grad):
    hkv, lk = k.shape[1], k.shape[2]
    bias_lk = None if bias is None else bias.shape[-1]
    k, v, kpm, bias, keep = _cut_keys(k, v, kv_lens, kpm, bias, keep)
    p, _, kz = _torch_probs(q, k, kv_lens, kpm, bias, scale, lse=lse)
    ct = p.dtype
    vz = _zero_padding(v.to(ct), key_padding(kv_lens, kpm, k.shape[2]))
    do = dout.to(ct)
    dv = (_grouped(_dropped(p, keep, dropout_p), hkv).transpose(-1, -2) @ _grouped(do, hkv)).sum(2)
    dp = _dropped(_grouped(do, hkv) @ vz[:, :, None].transpose(-1, -2), None if keep is None else _grouped(keep, hkv),
                  dropout_p).flatten(1, 2)
    delta = (do * out.to(ct)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = (_grouped(ds, hkv) @ kz[:, :, None]).flatten(1, 2) * scale
    dk = (_grouped(ds, hkv).transpose(-1, -2) @ _grouped(q.to(ct), hkv)).sum(2) * scale
    dbias = reduce_to_shape(ds, bias.shape).to(bias.dtype) if bias_grad else None
    if dbias is not None and bias_lk != 1:
        dbias = _pad_keys(dbias, lk, -1)
    return dq.to(q.dtype), _pad_keys(dk.to(k.dtype), lk, 2), _pad_keys(dv.to(v.dtype), lk, 2), dbias


register_backend(OP, "torch", priority=0, autograd=True,
                 description="plain PyTorch: scores materialised in fp32 (fp64 for fp64), the reference")(
    _Impl(_torch_forward, _torch_backward))


def _no_dropout_no_bias_grad(name: str, max_head_dim: int = MAX_HEAD_DIM):
    def check(q, k, v, kv_lens=None, kpm=None, bias=None, *, dropout_p=0.0, bias_grad=False, **_):
        reasons = []
        if dropout_p > 0:
            reasons.append(f"dropout is drawn from avfast's generator; {name} draws its own")
        if bias_grad:
            reasons.append(f"{name} gives no gradient for attn_bias")
        return reasons + _head_dim_reasons(q, max_head_dim)

    return check


def _dense_mask(q, k, kv_lens, kpm, bias):
    """(additive float mask (bias + -inf at padding) in q's dtype, dead rows (B|1, H|1, Lq, 1) or
    None, padding (B, Lk) or None) for the fused kernels that take one dense bias."""
    pad = key_padding(kv_lens, kpm, k.shape[2])
    if pad is None and bias is None:
        return None, None, None
    mask = torch.zeros((), dtype=q.dtype, device=q.device)
    if bias is not None:
        mask = mask + bias.to(q.dtype)
    if pad is not None:
        mask = mask + torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill(pad, float("-inf"))[:, None, None]
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    dead = (mask == float("-inf")).all(-1, keepdim=True)
    return mask, dead if dead.any() else None, pad


def _expand_heads(x, pad, groups: int):
    """(B, Hkv, Lk, Dh) with padding zeroed, repeated to (B, Hkv * groups, Lk, Dh) for kernels without GQA."""
    x = _zero_padding(x, pad)
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _finite_padding(x, pad):
    """x, or a copy with its padding keys zeroed when they hold NaN/inf (one read, no copy otherwise)."""
    if pad is None:
        return x
    # 1 * NaN, 0 * NaN and 1 * inf all stay non-finite: one batched GEMV finds them
    probe = pad.to(x.dtype)[:, None, None, :] @ x
    if bool(torch.isfinite(probe).all()):
        return x
    return _zero_padding(x, pad)


def _sdpa_inputs(q, k, v, kv_lens, kpm, bias):
    """Keys cut at max(kv_lens) (never read past it), mask, dead rows, padding; k/v safe and repeated."""
    k, v, kpm, bias, _ = _cut_keys(k, v, kv_lens, kpm, bias, None)
    mask, dead, pad = _dense_mask(q, k, kv_lens, kpm, bias)
    g = q.shape[1] // k.shape[1]
    k, v = (_finite_padding(t, pad) for t in (k, v))
    if g > 1:
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return k, v, mask, dead


def _sdpa_forward(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p):
    k, v, mask, dead = _sdpa_inputs(q, k, v, kv_lens, kpm, bias)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=scale)
    if dead is not None:
        out = out.masked_fill(dead, 0)
        lse = lse.masked_fill(dead[..., 0], float("-inf"))
    return out, lse.to(_lse_dtype(q.dtype))


def _sdpa_backward(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale, dropout_p, bias_grad):
    hkv, lk = k.shape[1], k.shape[2]
    kr, vr, mask, dead = _sdpa_inputs(q, k, v, kv_lens, kpm, bias)
    if dead is not None:
        dout = dout.masked_fill(dead, 0)
    lse = lse.masked_fill(lse == float("-inf"), 0)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.contiguous(), q, kr, vr, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    g = q.shape[1] // hkv
    dk, dv = (_grouped(d, hkv).sum(2) if g > 1 else d for d in (dk, dv))
    return dq, _pad_keys(dk, lk, 2), _pad_keys(dv, lk, 2), None


register_backend(OP, "sdpa", priority=20, devices=("cpu",), autograd=True, check=_no_dropout_no_bias_grad("sdpa", SDPA_MAX_HEAD_DIM),
                 description="PyTorch's fused SDPA flash kernel for CPU with avfast's masks (CPU users get "
                             "this or torch: no C++ kernel of our own); no attn_bias grad, no dropout")(
    _Impl(_sdpa_forward, _sdpa_backward))


@functools.lru_cache(maxsize=None)
def _xformers_missing() -> str | None:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return "xformers not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (xformers runs on CUDA only)"
    return None


def _xformers_bias(q, k, kv_lens, kpm, bias):
    """Dense (B, Hq, Lq, Lk) float mask on a 16-element-aligned row stride, as xformers requires."""
    mask, dead, pad = _dense_mask(q, k, kv_lens, kpm, bias)
    if mask is None:
        return None, None, None
    b, hq, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    store = torch.empty(b, hq, lq, (lk + 15) // 16 * 16, dtype=q.dtype, device=q.device)[..., :lk]
    store.copy_(mask.expand(b, hq, lq, lk) if dead is None else mask.expand(b, hq, lq, lk).masked_fill(dead, 0))
    return store, dead, pad


def _xformers_forward(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p):
    import xformers.ops as xops

    mask, dead, pad = _xformers_bias(q, k, kv_lens, kpm, bias)
    g = q.shape[1] // k.shape[1]
    k, v = (_expand_heads(t, pad, g).transpose(1, 2) for t in (k, v))
    out, lse = xops.memory_efficient_attention_forward_requires_grad(q.transpose(1, 2), k, v, attn_bias=mask, scale=scale)
    out, lse = out.transpose(1, 2), lse[..., : q.shape[2]].float()
    if dead is not None:
        out, lse = out.masked_fill(dead, 0), lse.masked_fill(dead[..., 0], float("-inf"))
    return out.contiguous(), lse


def _xformers_backward(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale, dropout_p, bias_grad):
    import xformers.ops as xops

    mask, dead, pad = _xformers_bias(q, k, kv_lens, kpm, bias)
    hkv, g = k.shape[1], q.shape[1] // k.shape[1]
    kr, vr = (_expand_heads(t, pad, g).transpose(1, 2) for t in (k, v))
    if dead is not None:
        dout = dout.masked_fill(dead, 0)
    # dead rows attended everything in the forward (mask row 0): a huge lse makes their p = 0
    lse = lse.masked_fill(lse == float("-inf"), 1e30)
    dq, dk, dv = xops.memory_efficient_attention_backward(
        dout.transpose(1, 2), out.transpose(1, 2), lse, q.transpose(1, 2), kr, vr, attn_bias=mask, scale=scale)
    dq, dk, dv = (d.transpose(1, 2) for d in (dq, dk, dv))
    dk, dv = (_grouped(d, hkv).sum(2) if g > 1 else d for d in (dk, dv))
    return dq.contiguous(), _zero_padding(dk, pad).contiguous(), _zero_padding(dv, pad).contiguous(), None


register_backend(OP, "xformers", priority=25, devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32),
                 autograd=True, deterministic=False, available=_xformers_missing, check=_no_dropout_no_bias_grad("xformers"),
                 description="xformers memory-efficient attention (CUDA, when installed; untested here); no attn_bias grad, "
                             "no dropout; backward may use atomics, so declared non-deterministic")(
    _Impl(_xformers_forward, _xformers_backward))


def _gpu_kernel_check(q, k, v, kv_lens=None, kpm=None, bias=None, *, dropout_p=0.0, bias_grad=False, **_):
    return _head_dim_reasons(q) + _grid_reasons(q, k, dropout_p, bias_grad)


def _triton_check(q, k, v, kv_lens=None, kpm=None, bias=None, *, dropout_p=0.0, bias_grad=False, needs_grad=False,
                  **_):
    """Head dims up to 512 where the target's shared memory holds the tiles and the fp16/bf16 kernels
    compile without register spills (avfast.kernels.attention.refusal)."""
    from avfast.kernels.attention import refusal

    rows = (q.shape[1] // k.shape[1]) * q.shape[2]
    why = refusal(rows, q.shape[-1], q.dtype, q.device, lq=q.shape[2], masks=kv_lens is not None or kpm is not None,
                  bias=bias is not None, needs_grad=bool(needs_grad))
    return why + _grid_reasons(q, k, dropout_p, bias_grad)


def _grid_reasons(q, k, dropout_p, bias_grad) -> list[str]:
    reasons = []
    b, hq, lq = q.shape[:3]
    if b * hq > 65535:
        reasons.append(f"B * Hq = {b * hq} exceeds the CUDA grid limit 65535")
    if (dropout_p > 0 or bias_grad) and b * hq * lq * k.shape[2] >= 2**31:
        reasons.append("dropout mask / attn_bias gradient with >= 2**31 elements (32-bit indexing)")
    return reasons


def _triton_forward(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p):
    from avfast.kernels import attention as kernels

    return kernels.attention_forward(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p)


def _triton_backward(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale, dropout_p, bias_grad):
    from avfast.kernels import attention as kernels

    dq, dk, dv, dbias = kernels.attention_backward(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, scale,
                                                   dropout_p, bias_grad)
    return dq, dk, dv, None if dbias is None else reduce_to_shape(dbias, bias.shape).to(bias.dtype)


triton_backend(OP, priority=30, dtypes=(torch.float16, torch.bfloat16, torch.float32), autograd=True,
               check=_triton_check,
               description="avfast flash forward/backward: online softmax, BLOCK_M from Lq, key splits for short "
                           "queries, kv_lens skip tiles, GQA, bias grads, deterministic backward (no atomics)")(
    _Impl(_triton_forward, _triton_backward))


def _cuda_forward(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p):
    return torch.ops.avfast_C.cross_attention_fwd_cuda(q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p)


def _cuda_backward(*_):
    raise NotImplementedError("the cuda cross_attention backend is forward-only; train with backend='triton'")


register_backend(OP, "cuda", priority=10, devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32),
                 autograd=False, available=cuda_op("cross_attention_fwd_cuda"), check=_gpu_kernel_check,
                 description="hand-written CUDA forward (csrc/cuda/attention.cu): one block per query row, warps "
                             "over key splits, no tensor cores; inference only, below triton in auto")(
    _Impl(_cuda_forward, _cuda_backward))


# ---------------------------------------------------------------------------------- custom op


@torch.library.custom_op("avfast::cross_attention", mutates_args=())
def _cross_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None,
                        key_padding_mask: torch.Tensor | None, attn_bias: torch.Tensor | None,
                        dropout_keep: torch.Tensor | None, scale: float, dropout_p: float,
                        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = get_backend(OP, backend).fn.forward(q, k, v, kv_lens, key_padding_mask, attn_bias, dropout_keep,
                                                    scale, dropout_p)
    return out.contiguous(), lse.contiguous()


@_cross_attention_op.register_fake
def _(q, k, v, kv_lens, key_padding_mask, attn_bias, dropout_keep, scale, dropout_p, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("avfast::cross_attention_backward", mutates_args=())
def _cross_attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor, kv_lens: torch.Tensor | None,
                                 key_padding_mask: torch.Tensor | None, attn_bias: torch.Tensor | None,
                                 dropout_keep: torch.Tensor | None, scale: float, dropout_p: float,
                                 bias_grad: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, dbias = get_backend(OP, backend).fn.backward(
        dout, q, k, v, out, lse, kv_lens, key_padding_mask, attn_bias, dropout_keep, scale, dropout_p, bias_grad)
    dbias = dbias.contiguous() if dbias is not None else q.new_empty(0)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dbias


@_cross_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, kv_lens, key_padding_mask, attn_bias, dropout_keep, scale, dropout_p, bias_grad, backend):
    dbias = attn_bias.new_empty(attn_bias.shape) if bias_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


def _setup_context(ctx, inputs, output):
    q, k, v, kv_lens, kpm, bias, keep, scale, dropout_p, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_lens, kpm, bias, keep)
    ctx.scale, ctx.dropout_p, ctx.backend = scale, dropout_p, backend
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, kv_lens, kpm, bias, keep = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[5]
    dq, dk, dv, dbias = _cross_attention_backward_op(dout, q, k, v, out, lse, kv_lens, kpm, bias, keep, ctx.scale,
                                                     ctx.dropout_p, bias_grad, ctx.backend)
    return dq, dk, dv, None, None, dbias if bias_grad else None, None, None, None, None


_cross_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------- public op


def _validate(q, k, v, kv_lens, key_padding_mask, attn_bias, dropout_p):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"cross_attention: {name} must be a 4-D tensor (B, H, L, Dh), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"cross_attention: {name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"cross_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    b, hq, lq, dh = q.shape
    if k.shape[0] != b or k.shape[-1] != dh or v.shape != k.shape:
        raise ValueError(f"cross_attention: expected k and v of shape (B={b}, Hkv, Lk, Dh={dh}), got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    hkv, lk = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"cross_attention: query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if min(lq, lk, dh) < 1:
        raise ValueError(f"cross_attention: empty sequence or head dim (Lq={lq}, Lk={lk}, Dh={dh})")
    if kv_lens is not None:
        if kv_lens.shape != (b,) or kv_lens.dtype.is_floating_point or kv_lens.dtype == torch.bool:
            raise ValueError(f"cross_attention: kv_lens must be an integer tensor of shape ({b},), got "
                             f"{kv_lens.dtype} {tuple(kv_lens.shape)}")
        if not torch.compiler.is_compiling() and kv_lens.device == q.device and kv_lens.numel():
            bad = (kv_lens < 0) | (kv_lens > lk)
            if bad.any():
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"cross_attention: kv_lens must lie in [0, Lk={lk}], got kv_lens[{i}]="
                                 f"{int(kv_lens[i])} (under torch.compile this check is skipped)")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (b, lk):
            raise ValueError(f"cross_attention: key_padding_mask must be bool of shape ({b}, {lk}) (True = padding), "
                             f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    if attn_bias is not None:
        if not attn_bias.dtype.is_floating_point:
            raise ValueError(f"cross_attention: attn_bias must be floating point (additive), got {attn_bias.dtype}; "
                             "pass boolean padding as key_padding_mask")
        try:
            torch.broadcast_shapes(attn_bias.shape, (b, hq, lq, lk))
        except RuntimeError:
            raise ValueError(f"cross_attention: attn_bias of shape {tuple(attn_bias.shape)} does not broadcast to "
                             f"(B, H, Lq, Lk) = {(b, hq, lq, lk)}") from None
        if attn_bias.dim() > 4 or torch.broadcast_shapes(attn_bias.shape, (b, hq, lq, lk)) != (b, hq, lq, lk):
            raise ValueError(f"cross_attention: attn_bias of shape {tuple(attn_bias.shape)} broadcasts beyond "
                             f"(B, H, Lq, Lk) = {(b, hq, lq, lk)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"cross_attention: dropout_p must be in [0, 1), got {dropout_p}")


def _dropout_keep(shape, p, generator, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device) >= p


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kv_lens: torch.Tensor | None = None,
                    key_padding_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                    scale: float | None = None, dropout_p: float = 0.0, generator: torch.Generator | None = None,
                    return_weights: bool = False, backend: str = "auto"):
    r"""Attention of a few queries over many padded keys: ``softmax(q k^T * scale + bias + mask) v``.

    .. devices:: CPU CUDA
    .. properties:: Autograd (q, k, v, attn_bias) torch.compile

    Args:
        q: (B, Hq, Lq, Dh) queries (e.g. a handful of audio tokens).
        k, v: (B, Hkv, Lk, Dh) keys/values; ``Hq`` a multiple of ``Hkv`` (GQA/MQA: q head ``h`` uses
            kv head ``h // (Hq // Hkv)``). ``Dh`` <= 256 on the fused GPU backends (512 on ``triton``
            where the GPU's shared memory holds the tiles), <= 1024 on ``sdpa`` (CPU); any Lq, Lk >= 1.
        kv_lens: (B,) integer valid key count per sample in [0, Lk] (ValueError otherwise, checked
            outside torch.compile); keys at ``>= kv_lens[b]`` are ignored (never read by the fused
            kernels, so they may hold garbage or NaN).
        key_padding_mask: (B, Lk) bool, True = padding (as ``nn.MultiheadAttention``). Combined
            with ``kv_lens`` by OR.
        attn_bias: float, broadcastable to (B, Hq, Lq, Lk), added to the scaled scores (``-inf``
            masks). Receives a gradient when it requires grad.
        scale: score scale, default ``Dh ** -0.5``.
        dropout_p: attention dropout; the keep mask (B, Hq, Lq, Lk) is drawn from ``generator``
            (default: the global generator of q's device) so every backend agrees for one seed.
        return_weights: also return the (B, Hq, Lq, Lk) attention probabilities (before dropout),
            computed by the reference path (for visualisation; memory O(B H Lq Lk)).
        backend: ``"auto"``, ``"torch"``, ``"sdpa"``, ``"xformers"`` or ``"triton"``.

    Returns:
        (B, Hq, Lq, Dh) in q's dtype (empty for B = 0), or ``(out, weights)`` with ``return_weights``. Rows whose keys
        are all masked give zeros, with zero gradients. Under ``torch.autocast`` q, k, v are cast to
        the autocast dtype first (as SDPA); ``attn_bias`` keeps its dtype.

    Equivalent to::

        k, v = (t.repeat_interleave(Hq // Hkv, 1) for t in (k, v))
        s = q @ k.transpose(-1, -2) * scale + attn_bias
        s = s.masked_fill(padding[:, None, None, :], -inf)        # padding from kv_lens | key_padding_mask
        out = torch.softmax(s, -1).nan_to_num(0) @ v             # all-masked rows -> 0
    """
    if isinstance(q, torch.Tensor) and torch.is_autocast_enabled(q.device.type):
        low = torch.get_autocast_dtype(q.device.type)  # like SDPA: attention runs in autocast's dtype
        q, k, v = (t.to(low) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in (q, k, v))
    _validate(q, k, v, kv_lens, key_padding_mask, attn_bias, dropout_p)
    b, hq, lq, dh = q.shape
    scale = float(dh ** -0.5 if scale is None else scale)
    if b == 0:  # an empty shard: empty outputs, still attached to q, k, v for autograd
        out = q * 0 + (k.sum() + v.sum()) * 0
        return (out, q.new_zeros(0, hq, lq, k.shape[2])) if return_weights else out
    keep = _dropout_keep((b, hq, lq, k.shape[2]), dropout_p, generator, q.device) if dropout_p > 0 else None
    if return_weights:
        return cross_attention_reference(q, k, v, kv_lens=kv_lens, key_padding_mask=key_padding_mask,
                                         attn_bias=attn_bias, scale=scale, dropout_mask=keep, dropout_p=dropout_p)
    tensors = (q, k, v, attn_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    bias_grad = torch.is_grad_enabled() and attn_bias is not None and attn_bias.requires_grad
    impl = select(OP, q, k, v, kv_lens, key_padding_mask, attn_bias, backend=backend, needs_grad=needs_grad,
                  dropout_p=dropout_p, bias_grad=bias_grad)
    out, _ = _cross_attention_op(q, k, v, kv_lens, key_padding_mask, attn_bias, keep, scale, float(dropout_p), impl.name)
    return out
