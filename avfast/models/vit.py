"""ViT-B/16 (the frame encoder of seed 000's PACS baselines) as our own module.

Layout follows google/vit-base-patch16-224-in21k (pre-norm blocks, qkv with biases, CLS token,
learned position embeddings, final LayerNorm, tanh pooler): 86,389,248 parameters with the pooler,
85,798,656 without. Pretrained weights are never downloaded: ``weights=`` loads a local state_dict
(our key names) strictly. The blocks are shared with ``avfast.models.ast``.

>>> import torch
>>> m = vit_b16(device="meta")
>>> sum(p.numel() for p in m.parameters())
86389248
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avfast.models.mit import load_state_dict_file

__all__ = ["ViTConfig", "VisionTransformer", "TransformerBlock", "vit_b16", "vit_tiny", "freeze_module",
           "sample_frame_indices", "frame_augment"]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT sizes; defaults are ViT-B/16 at 224 x 224 (ImageNet-21k release, with pooler)."""

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    eps: float = 1e-12               # HF ViT's LayerNorm eps
    pooler: bool = True

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig: image_size ({self.image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if min(self.depth, self.patch_size, self.in_channels) < 1:
            raise ValueError("ViTConfig: depth, patch_size and in_channels must be >= 1")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + MHSA(LN(x)), then x + MLP(LN(x)) (GELU). (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT: images (B, 3, H, W) -> CLS features (B, dim) (after the final LayerNorm, HF's
    ``last_hidden_state[:, 0]``); ``forward_tokens`` gives all tokens (B, 1 + N, dim)."""

    def __init__(self, config: ViTConfig = ViTConfig()):
        super().__init__()
        c = self.config = config
        self.patch_embed = nn.Conv2d(c.in_channels, c.dim, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.dim))
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, c.mlp_ratio, c.eps) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.pooler = nn.Linear(c.dim, c.dim) if c.pooler else None
        if not self.cls_token.is_meta:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_tokens(self, images: Tensor) -> Tensor:
        c = self.config
        if images.dim() != 4 or images.shape[1] != c.in_channels or images.shape[-2:] != (c.image_size,) * 2:
            raise ValueError(f"VisionTransformer: expected images (B, {c.in_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_tokens(images)[:, 0]

    def pooled(self, images: Tensor) -> Tensor:
        """HF's ``pooler_output``: tanh(Linear(CLS)) (B, dim); needs ``pooler=True``."""
        if self.pooler is None:
            raise ValueError("VisionTransformer.pooled: built with pooler=False")
        return torch.tanh(self.pooler(self.forward(images)))


def freeze_module(module: nn.Module) -> nn.Module:
    """Frozen backbone: no gradients, eval mode (the seed freezes every backbone layer)."""
    module.requires_grad_(False)
    return module.eval()


def _build(*, weights=None, device=None, frozen: bool = False, **overrides) -> VisionTransformer:
    with torch.device(device or "cpu"):
        model = VisionTransformer(ViTConfig(**overrides))
    if weights is not None:
        load_state_dict_file(model, weights)
    return freeze_module(model) if frozen else model


def vit_b16(*, weights=None, device=None, frozen: bool = False, **overrides) -> VisionTransformer:
    """ViT-B/16 (86.4M with pooler); ``weights``: local state_dict path; ``device="meta"`` to count."""
    return _build(weights=weights, device=device, frozen=frozen, **overrides)


def vit_tiny(*, weights=None, device=None, frozen: bool = False, **overrides) -> VisionTransformer:
    """A 2-block, 64-wide ViT on 32 x 32 images for tests."""
    return _build(weights=weights, device=device, frozen=frozen,
                  **{"image_size": 32, "dim": 64, "depth": 2, "heads": 4, **overrides})


def sample_frame_indices(num_frames: int, count: int = 8, *, train: bool = True,
                         generator: torch.Generator | None = None) -> Tensor:
    """``count`` evenly spaced frame indices of a ``num_frames`` video (int64 (count,)).

    Training draws a random offset inside the first stride (the seed's "randomly selected 8 evenly
    spaced frames"); evaluation starts at 0. Videos shorter than ``count`` repeat frames.
    """
    if num_frames < 1:
        raise ValueError(f"sample_frame_indices: a video needs >= 1 frame ({num_frames} given)")
    stride = num_frames / count
    offset = float(torch.rand((), generator=generator)) * stride if train else 0.0
    return (torch.arange(count, dtype=torch.float64) * stride + offset).floor().long().clamp_(max=num_frames - 1)


def frame_augment(frames: Tensor, *, crop: int = 224, train: bool = True,
                  generator: torch.Generator | None = None) -> Tensor:
    """The seed's frame augmentation: one crop of ``crop`` x ``crop`` shared by all frames (random
    in training, centred otherwise) and a horizontal flip with probability 0.5 (training).

    frames (T, C, H, W) (252 x 252 in the seed) -> (T, C, crop, crop).
    """
    H, W = frames.shape[-2:]
    if H < crop or W < crop:
        raise ValueError(f"frame_augment: frames {H}x{W} are smaller than the crop {crop}")
    if train:
        top = int(torch.randint(0, H - crop + 1, (), generator=generator))
        left = int(torch.randint(0, W - crop + 1, (), generator=generator))
    else:
        top, left = (H - crop) // 2, (W - crop) // 2
    out = frames[..., top:top + crop, left:left + crop]
    if train and float(torch.rand((), generator=generator)) < 0.5:
        out = out.flip(-1)
    return out
