"""``CrossModalAttention`` (drop-in ``nn.MultiheadAttention``) and ``BidirectionalCrossAttention``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avfast.ops.attention import cross_attention

__all__ = ["CrossModalAttention", "BidirectionalCrossAttention"]


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """nn.MultiheadAttention's mask convention (bool True = not allowed, or float added) -> float."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class CrossModalAttention(nn.Module):
    r"""Multi-head attention with the constructor, parameters, ``state_dict`` and outputs of
    ``nn.MultiheadAttention``, computed by ``avfast.ops.cross_attention`` (fused backends, per-sample
    key lengths, zeros instead of NaN for fully padded samples).

    .. devices:: CPU CUDA
    .. properties:: Autograd

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
            device, dtype: as ``nn.MultiheadAttention`` (``batch_first`` defaults to True here).
        backend: ``cross_attention`` backend (``"auto"``).

    Shapes (``batch_first``): query (B, L, E), key (B, S, kdim), value (B, S, vdim), or unbatched
    (L, E). Returns ``(attn_output (B, L, E), attn_weights)`` with weights (B, L, S) averaged over
    heads, (B, H, L, S) with ``average_attn_weights=False``, or None with ``need_weights=False``.
    Weights are computed by the reference path (memory O(B H L S)) and are the probabilities before
    dropout; pass ``need_weights=False`` for the fused kernels.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = True, device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be > 0, got {embed_dim} and {num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.add_zero_attn, self.backend = batch_first, add_zero_attn, backend
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        for b in (self.bias_k, self.bias_v):
            if b is not None:
                nn.init.xavier_normal_(b)

    def _project(self, query, key, value):
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias[:e], self.in_proj_bias[e:2 * e], self.in_proj_bias[2 * e:]
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False, *, kv_lens: torch.Tensor | None = None):
        """``nn.MultiheadAttention.forward``; ``kv_lens`` (B,) may replace a suffix ``key_padding_mask``.

        key_padding_mask: (B, S) bool (True = ignore) or float (added). attn_mask: (L, S) or
        (B * H, L, S), bool (True = not allowed) or float (added).
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal is a hint for attn_mask: pass the causal mask as attn_mask too")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query[None], key[None], value[None]
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError(f"expected query/key/value of shape (B, L, E), got {tuple(query.shape)}, "
                             f"{tuple(key.shape)}, {tuple(value.shape)}")
        if query.shape[-1] != self.embed_dim or key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError(f"expected feature sizes (E={self.embed_dim}, kdim={self.kdim}, vdim={self.vdim}), got "
                             f"{query.shape[-1]}, {key.shape[-1]}, {value.shape[-1]}")
        b, lq = query.shape[:2]
        q, k, v = self._project(query, key, value)
        bias = None
        if attn_mask is not None:
            bias = _additive(attn_mask, q.dtype)
            if bias.dim() == 3:
                bias = bias.view(b, self.num_heads, *bias.shape[1:])
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            kpm_bias = _additive(key_padding_mask, q.dtype)[:, None, None, :]
            bias = kpm_bias if bias is None else bias + kpm_bias
            key_padding_mask = None
        extra = (self.bias_k is not None) + self.add_zero_attn
        if extra and kv_lens is not None:  # appended keys sit past kv_lens: use a mask instead
            pad = torch.arange(k.shape[1], device=k.device)[None] >= kv_lens[:, None]
            key_padding_mask = pad if key_padding_mask is None else key_padding_mask | pad
            kv_lens = None
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(b, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(b, 1, -1)], dim=1)
        if self.add_zero_attn:
            k, v = (torch.cat([x, x.new_zeros(b, 1, x.shape[-1])], dim=1) for x in (k, v))
        if extra:
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, extra), value=False)
            bias = None if bias is None else F.pad(bias, (0, extra), value=0.0)
        result = cross_attention(self._heads(q), self._heads(k), self._heads(v), kv_lens=kv_lens,
                                 key_padding_mask=key_padding_mask, attn_bias=bias,
                                 dropout_p=self.dropout if self.training else 0.0,
                                 return_weights=need_weights, backend=self.backend)
        out, weights = result if need_weights else (result, None)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if unbatched:
            return out[0], None if weights is None else weights[0]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


class BidirectionalCrossAttention(nn.Module):
    r"""Audio->visual and visual->audio cross-attention, each with residual and LayerNorm.

    Both directions read the block's inputs (they run side by side, not one after the other)::

        a' = norm_a(a + dropout(attn_a2v(a, v, v)))      # audio queries over visual keys
        v' = norm_v(v + dropout(attn_v2a(v, a, a)))      # visual queries over audio keys

    With ``norm_first=True``: ``a' = a + attn_a2v(norm_a(a), norm_v(v), norm_v(v))`` and likewise.

    Args:
        embed_dim: audio feature size E_a. num_heads: heads of both attentions.
        visual_dim: visual feature size E_v (default E_a). dropout: attention and residual dropout.
        bias, layer_norm_eps, norm_first: as ``nn.TransformerEncoderLayer``. backend: op backend.

    Shapes: a (B, La, E_a), v (B, Lv, E_v); padding as (B, L) bool masks (True = padding) or
    (B,) lengths. Returns (a' (B, La, E_a), v' (B, Lv, E_v)), plus the two head-averaged weight
    maps ((B, La, Lv), (B, Lv, La)) when ``need_weights``.
    """

    def __init__(self, embed_dim: int, num_heads: int, visual_dim: int | None = None, dropout: float = 0.0,
                 bias: bool = True, layer_norm_eps: float = 1e-5, norm_first: bool = False, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__()
        visual_dim = visual_dim or embed_dim
        factory = {"device": device, "dtype": dtype}
        self.norm_first = norm_first
        self.attn_a2v = CrossModalAttention(embed_dim, num_heads, dropout, bias, kdim=visual_dim, vdim=visual_dim,
                                            backend=backend, **factory)
        self.attn_v2a = CrossModalAttention(visual_dim, num_heads, dropout, bias, kdim=embed_dim, vdim=embed_dim,
                                            backend=backend, **factory)
        self.norm_a = nn.LayerNorm(embed_dim, eps=layer_norm_eps, **factory)
        self.norm_v = nn.LayerNorm(visual_dim, eps=layer_norm_eps, **factory)
        self.dropout = nn.Dropout(dropout)

    def forward(self, a: torch.Tensor, v: torch.Tensor, *, a_padding_mask: torch.Tensor | None = None,
                v_padding_mask: torch.Tensor | None = None, a_lens: torch.Tensor | None = None,
                v_lens: torch.Tensor | None = None, need_weights: bool = False):
        """(a (B, La, E_a), v (B, Lv, E_v)) -> (a', v') [+ (weights_a2v, weights_v2a)]."""
        qa, qv = (self.norm_a(a), self.norm_v(v)) if self.norm_first else (a, v)
        da, wa = self.attn_a2v(qa, qv, qv, key_padding_mask=v_padding_mask, kv_lens=v_lens, need_weights=need_weights)
        dv, wv = self.attn_v2a(qv, qa, qa, key_padding_mask=a_padding_mask, kv_lens=a_lens, need_weights=need_weights)
        if self.norm_first:
            a_out, v_out = a + self.dropout(da), v + self.dropout(dv)
        else:
            a_out, v_out = self.norm_a(a + self.dropout(da)), self.norm_v(v + self.dropout(dv))
        return (a_out, v_out, (wa, wv)) if need_weights else (a_out, v_out)
