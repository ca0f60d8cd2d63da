"""AST (Audio Spectrogram Transformer, patch 16, time and frequency strides 10) as our own module,
with the seed 000 front end: raw audio -> ``avfast.ops.mel_spectrogram`` preset ``ast`` (kaldi fbank,
128 mel bins, 1024 frames, AST normalisation; SpecAugment masks 48 / 144 in training) -> AST noise.

Layout follows the public AST (DeiT-base-384 distilled: CLS and distillation tokens, 12 x 768
blocks, output = mean of the two tokens after the final LayerNorm, an optional LayerNorm + Linear
head for AudioSet's 527 classes). With 128 x 1024 input there are 12 x 101 = 1212 patches.
Weights load from a local state_dict (our key names), strictly; nothing is downloaded.

>>> m = ast_base(device="meta")
>>> sum(p.numel() for p in m.parameters())
86594063
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from avfast.models.mit import load_state_dict_file
from avfast.models.vit import TransformerBlock, freeze_module
from avfast.nn.mel import AstNoise, MelSpectrogram

__all__ = ["ASTConfig", "AudioSpectrogramTransformer", "AstFrontEnd", "ast_base", "ast_tiny"]


@dataclasses.dataclass(frozen=True)
class ASTConfig:
    """AST sizes; defaults: the AudioSet release used by PACS (strides 10, 128 x 1024, 527 classes)."""

    n_mels: int = 128
    frames: int = 1024
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    classes: int = 527               # 0: no head (features only)

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"ASTConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")
        if min(self.n_mels, self.frames) < self.patch_size:
            raise ValueError(f"ASTConfig: input {self.n_mels} x {self.frames} is smaller than a patch "
                             f"({self.patch_size})")
        if min(self.fstride, self.tstride, self.depth) < 1 or self.classes < 0:
            raise ValueError("ASTConfig: strides and depth must be >= 1, classes >= 0")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (frequency, time)."""
        return ((self.n_mels - self.patch_size) // self.fstride + 1,
                (self.frames - self.patch_size) // self.tstride + 1)


class AudioSpectrogramTransformer(nn.Module):
    """fbank (B, frames, n_mels) -> features (B, dim) (mean of CLS and distillation tokens);
    ``logits`` adds the head (B, classes)."""

    def __init__(self, config: ASTConfig = ASTConfig()):
        super().__init__()
        c = self.config = config
        f, t = c.grid
        self.patch_embed = nn.Conv2d(1, c.dim, c.patch_size, stride=(c.fstride, c.tstride))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + f * t, c.dim))
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, c.mlp_ratio, 1e-6) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.classes)) if c.classes else None
        if not self.pos_embed.is_meta:
            for p in (self.cls_token, self.dist_token, self.pos_embed):
                nn.init.trunc_normal_(p, std=0.02)

    def forward(self, fbank: Tensor) -> Tensor:
        c = self.config
        if fbank.dim() != 3 or fbank.shape[1:] != (c.frames, c.n_mels):
            raise ValueError(f"AudioSpectrogramTransformer: expected fbank (B, {c.frames}, {c.n_mels}), "
                             f"got {tuple(fbank.shape)}")
        x = self.patch_embed(fbank.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return (x[:, 0] + x[:, 1]) / 2

    def logits(self, fbank: Tensor) -> Tensor:
        if self.head is None:
            raise ValueError("AudioSpectrogramTransformer.logits: built with classes=0 (no head)")
        return self.head(self.forward(fbank))


class AstFrontEnd(nn.Module):
    """Raw audio (B, samples) at 16 kHz -> AST input (B, 1024, 128): fused kaldi fbank + normalisation
    + SpecAugment (freq 48, time 144; training only), then AST's noise and time roll (training only)."""

    def __init__(self, *, masks: bool = True, noise: bool = True, backend: str = "auto", **mel_overrides):
        super().__init__()
        self.mel = MelSpectrogram("ast", backend=backend, masks=masks, **mel_overrides)
        self.noise = AstNoise(time_dim=1) if noise else nn.Identity()

    def forward(self, wave: Tensor, lengths: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        spec = self.mel(wave, lengths, generator)
        return self.noise(spec, generator) if isinstance(self.noise, AstNoise) else spec


def _build(*, weights=None, device=None, frozen: bool = False, **overrides) -> AudioSpectrogramTransformer:
    with torch.device(device or "cpu"):
        model = AudioSpectrogramTransformer(ASTConfig(**overrides))
    if weights is not None:
        load_state_dict_file(model, weights)
    return freeze_module(model) if frozen else model


def ast_base(*, weights=None, device=None, frozen: bool = False, **overrides) -> AudioSpectrogramTransformer:
    """AST base, strides 10, 128 x 1024 input (86.6M with the 527-class head); ``device="meta"`` to count."""
    return _build(weights=weights, device=device, frozen=frozen, **overrides)


def ast_tiny(*, weights=None, device=None, frozen: bool = False, **overrides) -> AudioSpectrogramTransformer:
    """A 2-block, 64-wide AST on 128 x 64 input for tests."""
    return _build(weights=weights, device=device, frozen=frozen,
                  **{"frames": 64, "dim": 64, "depth": 2, "heads": 4, "classes": 0, **overrides})
