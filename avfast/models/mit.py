"""Mix Transformer (MiT), SegFormer's hierarchical encoder, built from code (no hub weights).

Four stages; stage i embeds overlapping patches (conv ``patch_sizes[i]`` / ``strides[i]``), runs
``depths[i]`` blocks of efficient self-attention (keys and values from a map shrunk by a
``sr_ratios[i]`` strided conv) and Mix-FFN (Linear, 3x3 depthwise conv, GELU, Linear), and ends with
LayerNorm. Input (B, 3, H, W) -> four maps (B, C_i, H / s_i, W / s_i) with s = 4, 8, 16, 32.

The attention's shape (N queries over N / r^2 keys) runs through ``avfast.ops.cross_attention``.
Sizes b0-b5 follow the SegFormer paper's Table (embed dims, depths; heads 1, 2, 5, 8; reduction
8, 4, 2, 1). ``weights=`` loads a local ``state_dict`` file (``torch.load(weights_only=True)``,
strict; missing or unexpected keys are named in the error).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from avfast.ops.attention import cross_attention

__all__ = ["MiTConfig", "MixTransformer", "load_state_dict_file", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4",
           "mit_b5", "mit_tiny"]


@dataclasses.dataclass(frozen=True)
class MiTConfig:
    """Sizes of a Mix Transformer; defaults are MiT-b0."""

    embed_dims: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: float = 4.0
    in_channels: int = 3
    qkv_bias: bool = True
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        fields = ("embed_dims", "depths", "num_heads", "sr_ratios", "patch_sizes", "strides")
        lengths = {name: len(getattr(self, name)) for name in fields}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"MiTConfig: per-stage tuples must have one length, got {lengths}")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if heads <= 0 or dim % heads:
                raise ValueError(f"MiTConfig: embed dim {dim} is not divisible by {heads} heads")
        if min(self.depths) < 1 or min(self.sr_ratios) < 1:
            raise ValueError(f"MiTConfig: depths and sr_ratios must be >= 1, got {self.depths}, {self.sr_ratios}")

    @property
    def reductions(self) -> tuple[int, ...]:
        """Total stride of each stage's output (4, 8, 16, 32 for the defaults)."""
        out, total = [], 1
        for s in self.strides:
            total *= s
            out.append(total)
        return tuple(out)


class _OverlapPatchEmbed(nn.Module):
    def __init__(self, in_ch: int, dim: int, patch: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class _EfficientSelfAttention(nn.Module):
    """Self-attention whose keys/values come from the map shrunk ``sr`` times by a strided conv."""

    def __init__(self, dim: int, heads: int, sr: int, qkv_bias: bool, eps: float, backend: str):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr, sr) if sr > 1 else None
        self.norm = nn.LayerNorm(dim, eps=eps) if sr > 1 else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        kv_in = x
        if self.sr is not None:
            kv_in = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(kv_in).view(b, kv_in.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = cross_attention(q, k, v, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class _DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int, cfg: MiTConfig, drop_path: float, backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = _EfficientSelfAttention(dim, heads, sr, cfg.qkv_bias, cfg.layer_norm_eps, backend)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.ffn = _MixFFN(dim, int(dim * cfg.mlp_ratio))
        self.drop_path = _DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """MiT encoder: ``(B, 3, H, W) -> [(B, C_i, H / s_i, W / s_i) for the 4 stages]``.

    ``out_channels`` = ``config.embed_dims``; ``reductions`` = total strides of the stages.
    """

    def __init__(self, config: MiTConfig = MiTConfig(), *, backend: str = "auto"):
        super().__init__()
        self.config = config
        self.out_channels = tuple(config.embed_dims)
        self.reductions = config.reductions
        total = sum(config.depths)
        rates = [config.drop_path * i / max(total - 1, 1) for i in range(total)]
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        in_ch, index = config.in_channels, 0
        for i, dim in enumerate(config.embed_dims):
            self.embeds.append(_OverlapPatchEmbed(in_ch, dim, config.patch_sizes[i], config.strides[i],
                                                  config.layer_norm_eps))
            self.stages.append(nn.ModuleList(
                _Block(dim, config.num_heads[i], config.sr_ratios[i], config, rates[index + j], backend)
                for j in range(config.depths[i])))
            self.norms.append(nn.LayerNorm(dim, eps=config.layer_norm_eps))
            in_ch, index = dim, index + config.depths[i]
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"MixTransformer expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        maps = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            x, h, w = embed(x)
            for block in blocks:
                x = block(x, h, w)
            x = norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)
            maps.append(x)
        return maps


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def load_state_dict_file(module: nn.Module, path, *, prefix: str = "") -> nn.Module:
    """Load a local ``state_dict`` file into ``module``, strictly; errors name the file and keys.

    ``prefix`` is stripped from the file's keys (e.g. ``"backbone."``); a ``{"state_dict": ...}``
    or ``{"model": ...}`` wrapper is unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: weights file not found (pretrained weights are not downloaded; "
                                "pass a local state_dict file or weights=None)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: state_dict does not match {type(module).__name__}: missing keys "
                         f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys "
                         f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]]
        raise ValueError(f"{path}: shape mismatch (key, file, model) for {shapes}")
    module.load_state_dict(state, strict=True)
    return module


def _build(embed_dims, depths, *, weights=None, backend: str = "auto", **overrides) -> MixTransformer:
    model = MixTransformer(MiTConfig(embed_dims=embed_dims, depths=depths, **overrides), backend=backend)
    return load_state_dict_file(model, weights) if weights is not None else model


def mit_b0(*, weights=None, **kw) -> MixTransformer:
    """MiT-b0: dims 32-64-160-256, depths 2-2-2-2."""
    return _build((32, 64, 160, 256), (2, 2, 2, 2), weights=weights, **kw)


def mit_b1(*, weights=None, **kw) -> MixTransformer:
    """MiT-b1: dims 64-128-320-512, depths 2-2-2-2."""
    return _build((64, 128, 320, 512), (2, 2, 2, 2), weights=weights, **kw)


def mit_b2(*, weights=None, **kw) -> MixTransformer:
    """MiT-b2 (the AVS papers' usual backbone): dims 64-128-320-512, depths 3-4-6-3."""
    return _build((64, 128, 320, 512), (3, 4, 6, 3), weights=weights, **kw)


def mit_b3(*, weights=None, **kw) -> MixTransformer:
    """MiT-b3: dims 64-128-320-512, depths 3-4-18-3."""
    return _build((64, 128, 320, 512), (3, 4, 18, 3), weights=weights, **kw)


def mit_b4(*, weights=None, **kw) -> MixTransformer:
    """MiT-b4: dims 64-128-320-512, depths 3-8-27-3."""
    return _build((64, 128, 320, 512), (3, 8, 27, 3), weights=weights, **kw)


def mit_b5(*, weights=None, **kw) -> MixTransformer:
    """MiT-b5: dims 64-128-320-512, depths 3-6-40-3."""
    return _build((64, 128, 320, 512), (3, 6, 40, 3), weights=weights, **kw)


def mit_tiny(*, weights=None, **kw) -> MixTransformer:
    """A tiny MiT for tests and CPU demos: dims 16-32-64-128, one block per stage, heads 1-1-2-4."""
    kw.setdefault("num_heads", (1, 1, 2, 4))
    return _build((16, 32, 64, 128), (1, 1, 1, 1), weights=weights, **kw)
