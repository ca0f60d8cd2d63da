"""Seed 002: audio-visual segmentation with implicit counterfactual learning (ICL-AVS / ICF).

Pipeline for a clip of T frames (every frame is one row of the B*T "frame batch"):

1. Visual: ``MixTransformer`` maps V1..V4 (strides 4..32) of each frame, or maps given directly
   (``visual_maps=``, features from files). Audio: 128-d VGGish-style vectors per frame from files,
   or ``MelAudioEncoder`` on ``ops.mel_spectrogram`` of the frame's 1 s of wave.
2. Baseline context (the seed's implementation note 4): frame-level channel-wise cross-attention
   (``ChannelCrossAttention``: the frame's audio re-weights the channels of V4) and self-attention
   over the T x h4 x w4 tokens of the clip (spatio-temporal context).
3. Implicit text (ICF's multi-granularity implicit text, our reading): ``k_text`` (k^t) learned
   semantic tokens; each frame's audio-visual query reads them by attention (frame level), averaged
   over windows of ``ceil(T / window_divisor)`` frames (segment level: T/2 for S4 and MS3, T/4 for
   AVSS, the seed's note 1) and over the clip (video level); the three are summed.
4. Semantic counterfactual (our reading): a Gaussian latent ``z`` of the text (KL to N(0, I),
   weight lambda_z), a learned map to a counterfactual latent ``z_cf`` pushed orthogonal to ``z``
   (``ortho`` term), both decoded back to text tokens.
5. Bidirectional queries (``nn.BidirectionalCrossAttention``): the audio and text tokens attend over
   V4's tokens and V4's tokens attend over them, so audio is not the only query (note 4).
6. Mask decoder: "SegFormer all-MLP head with an audio FiLM": V1..V3 and the interacted V4 are
   projected to ``dim``, upsampled to stride 4, concatenated and fused by a 1x1 conv; the fused
   pixel features are modulated by the interacted audio query (scale and shift) and a 1x1 conv gives
   mask logits (1 channel for S4/MS3, 71 classes for AVSS), upsampled to the input size.
7. The counterfactual branch runs 5-6 again with the counterfactual text; CDCL contrasts the
   decoder's (post-interaction) features (note 3) with ``ops.contrastive_loss``.

The loss (``ICLAVSLoss``) holds every term with the seed's weights, each switchable by its weight.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from avfast.models.mit import MixTransformer, load_state_dict_file, mit_b0, mit_b1, mit_b2, mit_tiny
from avfast.nn.attention import BidirectionalCrossAttention, CrossModalAttention
from avfast.ops import MelConfig, contrastive_loss, mel_spectrogram

__all__ = ["ICLAVSConfig", "ICLAVSLossConfig", "ICLAVSModel", "ICLAVSLoss", "ChannelCrossAttention",
           "ImplicitText", "SemanticCounterfactual", "MelAudioEncoder", "SegFormerAudioHead", "masked_average_pool",
           "dice_loss", "focal_loss", "kl_standard_normal", "orthogonality_loss", "time_window",
           "build_icl_avs", "icl_avs_baseline", "icl_avs_tiny"]

# task -> (classes incl. background or 1 for binary, frames per clip, time-window divisor)
TASKS = {"s4": (1, 5, 2), "ms3": (1, 5, 2), "avss": (71, 10, 4)}
BACKBONES = {"mit_b0": mit_b0, "mit_b1": mit_b1, "mit_b2": mit_b2, "mit_tiny": mit_tiny}
VGGISH_MEL = MelConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=64, f_min=125.0,
                       f_max=7500.0, center=False, log="log", log_offset=0.01, target_frames=96)


def time_window(frames: int, divisor: int) -> int:
    """The seed's segment length ``ceil(T / divisor)`` (divisor 2 for S4 / MS3, 4 for AVSS)."""
    return max(1, math.ceil(frames / divisor))


@dataclasses.dataclass(frozen=True)
class ICLAVSConfig:
    """Architecture of ICL-AVS; defaults are the paper's setting for S4 (MiT-b2, k^t = 15)."""

    task: str = "s4"
    backbone: str = "mit_b2"
    backbone_weights: str | None = None
    audio: str = "vggish"            # "vggish": (B, T, audio_dim) features; "mel": waves (B, T, samples)
    audio_dim: int = 128
    dim: int = 256
    heads: int = 8
    k_text: int = 15                 # k^t (the seed's Table 1; its text says 30: configs/avs/*_kt30.yaml)
    window_divisor: int | None = None  # None: the task's (2 for S4 / MS3, 4 for AVSS)
    latent_dim: int = 64
    implicit_text: bool = True
    counterfactual: bool = True
    temporal_attention: bool = True
    num_classes: int | None = None   # None: the task's (1 binary, 71 for AVSS)
    dropout: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"ICLAVSConfig.task must be one of {sorted(TASKS)} ({self.task!r} given)")
        if self.backbone not in BACKBONES:
            raise ValueError(f"ICLAVSConfig.backbone must be one of {sorted(BACKBONES)} ({self.backbone!r} given)")
        if self.audio not in ("vggish", "mel"):
            raise ValueError(f"ICLAVSConfig.audio must be 'vggish' or 'mel' ({self.audio!r} given)")
        if self.dim % self.heads:
            raise ValueError(f"ICLAVSConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.k_text < 1 or self.latent_dim < 1:
            raise ValueError(f"ICLAVSConfig: k_text and latent_dim must be >= 1 ({self.k_text}, {self.latent_dim})")
        if self.counterfactual and not self.implicit_text:
            raise ValueError("ICLAVSConfig: counterfactual=True needs implicit_text=True (the counterfactual is "
                             "built from the implicit text)")
        if self.window_divisor is not None and self.window_divisor < 1:
            raise ValueError(f"ICLAVSConfig.window_divisor must be >= 1 ({self.window_divisor} given)")
        classes = self.classes
        if self.task == "avss" and classes < 2:
            raise ValueError(f"ICLAVSConfig: AVSS needs >= 2 classes ({classes} given)")
        if self.task != "avss" and classes != 1:
            raise ValueError(f"ICLAVSConfig: {self.task} is binary (num_classes 1), got {classes}")

    @property
    def classes(self) -> int:
        return self.num_classes if self.num_classes is not None else TASKS[self.task][0]

    @property
    def divisor(self) -> int:
        return self.window_divisor if self.window_divisor is not None else TASKS[self.task][2]


@dataclasses.dataclass(frozen=True)
class ICLAVSLossConfig:
    """Loss weights of the seed's Table 1 (0 turns a term off) and the contrast settings."""

    bce: float = 1.0
    dice: float = 1.0
    focal: float = 1.0
    cf: float = 0.2
    cdcl: float = 0.2
    ortho: float = 1.0
    z: float = 0.8                   # lambda_z
    va: float = 0.4                  # v <-> a inside CDCL
    al: float = 0.3                  # a <-> l
    vl: float = 0.3                  # v <-> l
    tau: float = 0.07
    contrast: str = "frame"          # "frame" | "prototype" (the seed's contrast-strategy ablation)
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    backend: str = "auto"

    def __post_init__(self):
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name in ("bce", "dice", "focal", "cf", "cdcl", "ortho", "z", "va", "al", "vl")}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ValueError(f"ICLAVSLossConfig: weights must be >= 0, got {bad}")
        if self.contrast not in ("frame", "prototype"):
            raise ValueError(f"ICLAVSLossConfig.contrast must be 'frame' or 'prototype' ({self.contrast!r} given)")
        if self.tau <= 0:
            raise ValueError(f"ICLAVSLossConfig.tau must be > 0 ({self.tau} given)")


# Blocks -------------------------------------------------------------------------------------------


class MelAudioEncoder(nn.Module):
    """Our audio encoder: ``ops.mel_spectrogram`` (VGGish front end: 64 mels, 25 ms / 10 ms, 96
    frames) -> 4 conv blocks -> global pooling -> ``out_dim``. Waves (N, samples) at 16 kHz -> (N, out_dim)."""

    def __init__(self, out_dim: int = 128, width: int = 32, mel: MelConfig = VGGISH_MEL, backend: str = "auto"):
        super().__init__()
        self.mel, self.backend = mel, backend
        layers, ch = [], 1
        for i in range(4):
            out = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, out_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = mel_spectrogram(wave, self.mel, backend=self.backend)  # (N, 64, 96)
        return self.proj(self.features(spec[:, None]).mean((-2, -1)))


class ChannelCrossAttention(nn.Module):
    """Frame-level channel-wise cross-attention (our reading of the baseline): the frame's audio and
    the map's channel descriptor give per-channel weights in (0, 1) that re-weight the visual map.

    ``v' = v * (1 + sigmoid(W2 relu(W1 [GAP(v); a])))``; v (N, C, h, w), a (N, C) -> (N, C, h, w).
    """

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim // reduction), nn.ReLU(inplace=True),
                                 nn.Linear(dim // reduction, dim))

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.mlp(torch.cat([v.mean((-2, -1)), a], dim=-1)))
        return v * (1 + w[..., None, None])


class ImplicitText(nn.Module):
    """Multi-granularity implicit text (our reading of ICF's MIT): ``k`` learned tokens read by
    attention per frame, then averaged per time window (segment) and per clip (video), summed.

    query (B, T, D) -> text (B, T, D); ``window`` = frames per segment.
    """

    def __init__(self, dim: int, heads: int, k: int, backend: str = "auto"):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(k, dim) * dim ** -0.5)
        self.attn = CrossModalAttention(dim, heads, backend=backend)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, window: int) -> torch.Tensor:
        b, t, d = query.shape
        bank = self.tokens.expand(b, -1, -1)
        frame, _ = self.attn(query, bank, bank, need_weights=False)
        segments = math.ceil(t / window)
        padded = F.pad(frame, (0, 0, 0, segments * window - t))
        counts = F.pad(frame.new_ones(b, t, 1), (0, 0, 0, segments * window - t))
        seg = padded.view(b, segments, window, d).sum(2) / counts.view(b, segments, window, 1).sum(2)
        segment = seg.repeat_interleave(window, dim=1)[:, :t]
        return self.norm(frame + segment + frame.mean(1, keepdim=True))


class SemanticCounterfactual(nn.Module):
    """Latent z of the text (reparameterised Gaussian) and a learned counterfactual latent.

    text (N, D) -> dict(text=decoded factual text (N, D), text_cf=(N, D), z, z_cf, mu, logvar (N, Dz)).
    At eval time ``z = mu``.
    """

    def __init__(self, dim: int, latent_dim: int, counterfactual: bool = True):
        super().__init__()
        self.encode = nn.Linear(dim, 2 * latent_dim)
        self.decode = nn.Sequential(nn.Linear(latent_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.to_cf = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU(),
                                   nn.Linear(latent_dim, latent_dim)) if counterfactual else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, text: torch.Tensor) -> dict:
        mu, logvar = self.encode(text).chunk(2, dim=-1)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        out = {"mu": mu, "logvar": logvar, "z": z, "text": self.norm(text + self.decode(z))}
        if self.to_cf is not None:
            z_cf = self.to_cf(z)
            out.update(z_cf=z_cf, text_cf=self.norm(text + self.decode(z_cf)))
        return out


class SegFormerAudioHead(nn.Module):
    """Mask decoder: SegFormer all-MLP head with an audio FiLM before the classifier.

    maps [(N, C_i, h_i, w_i)] (the first at stride 4), audio query (N, D) ->
    (logits (N, K, h_1, w_1), pixel features (N, D, h_1, w_1) after the FiLM).
    """

    def __init__(self, in_channels: tuple[int, ...], dim: int, classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(len(in_channels) * dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=True))
        self.film = nn.Linear(dim, 2 * dim)
        self.classifier = nn.Conv2d(dim, classes, 1)

    def forward(self, maps: list[torch.Tensor], audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = maps[0].shape[-2:]
        ups = [F.interpolate(p(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size else p(m)
               for p, m in zip(self.proj, maps)]
        pixels = self.fuse(torch.cat(ups, dim=1))
        scale, shift = self.film(audio).chunk(2, dim=-1)
        pixels = pixels * (1 + scale[..., None, None]) + shift[..., None, None]
        return self.classifier(pixels), pixels


# Model --------------------------------------------------------------------------------------------


class ICLAVSModel(nn.Module):
    """ICL-AVS (module doc). ``forward(frames=, audio=, visual_maps=)``.

    Args:
        frames: (B, T, 3, H, W) normalised images (or ``visual_maps``: 4 maps (B*T, C_i, h_i, w_i)
            with the backbone's channels, and ``image_size=(H, W)``).
        audio: (B, T, audio_dim) features (``audio="vggish"``) or (B, T, samples) 16 kHz waves (``"mel"``).

    Returns a dict: ``logits`` (B, T, H, W) for binary tasks, (B, T, K, H, W) for AVSS; ``pixels``
    (B*T, D, H/4, W/4) and ``audio`` (B*T, D): the decoder's post-interaction features; ``text``
    (B*T, D) (implicit text); with the counterfactual branch also ``logits_cf``, ``pixels_cf``,
    ``audio_cf``, ``text_cf``; and ``z``, ``z_cf``, ``mu``, ``logvar`` (B*T, latent_dim).
    """

    def __init__(self, config: ICLAVSConfig, backbone: MixTransformer | None = None):
        super().__init__()
        self.config = c = config
        self.backbone = backbone if backbone is not None else BACKBONES[c.backbone](backend=c.backend)
        chans = self.backbone.out_channels
        self.audio_encoder = MelAudioEncoder(c.audio_dim, backend=c.backend) if c.audio == "mel" else None
        self.audio_proj = nn.Sequential(nn.Linear(c.audio_dim, c.dim), nn.LayerNorm(c.dim))
        self.top_proj = nn.Conv2d(chans[-1], c.dim, 1)
        self.channel_attn = ChannelCrossAttention(c.dim)
        self.temporal = (CrossModalAttention(c.dim, c.heads, c.dropout, backend=c.backend)
                         if c.temporal_attention else None)
        self.temporal_norm = nn.LayerNorm(c.dim) if c.temporal_attention else None
        self.text = ImplicitText(c.dim, c.heads, c.k_text, c.backend) if c.implicit_text else None
        self.semantic = SemanticCounterfactual(c.dim, c.latent_dim, c.counterfactual) if c.implicit_text else None
        self.interaction = BidirectionalCrossAttention(c.dim, c.heads, dropout=c.dropout, backend=c.backend)
        self.head = SegFormerAudioHead(tuple(chans[:-1]) + (c.dim,), c.dim, c.classes)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T, audio_dim) or (B, T, samples) -> (B*T, D)."""
        b, t = audio.shape[:2]
        flat = audio.reshape(b * t, -1)
        if self.audio_encoder is not None:
            flat = self.audio_encoder(flat)
        elif flat.shape[-1] != self.config.audio_dim:
            raise ValueError(f"ICLAVSModel: audio features must be (B, T, {self.config.audio_dim}), got "
                             f"{tuple(audio.shape)} (set audio='mel' for waves)")
        return self.audio_proj(flat.float())

    def _context(self, top: torch.Tensor, a: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """Channel-wise cross-attention per frame, then self-attention over the clip's tokens."""
        top = self.channel_attn(self.top_proj(top), a)
        if self.temporal is None:
            return top
        n, d, h, w = top.shape
        tokens = top.view(b, t, d, h * w).permute(0, 1, 3, 2).reshape(b, t * h * w, d)
        ctx, _ = self.temporal(tokens, tokens, tokens, need_weights=False)
        tokens = self.temporal_norm(tokens + ctx)
        return tokens.view(b, t, h * w, d).permute(0, 1, 3, 2).reshape(n, d, h, w)

    def _decode(self, maps, top, a, text):
        """Bidirectional queries + mask head -> (logits (N, K, h1, w1), pixels, audio query)."""
        n, d, h, w = top.shape
        queries = a[:, None] if text is None else torch.stack([a, text], dim=1)
        queries, v = self.interaction(queries, top.flatten(2).transpose(1, 2))
        top = v.transpose(1, 2).reshape(n, d, h, w)
        logits, pixels = self.head(list(maps[:-1]) + [top], queries[:, 0])
        return logits, pixels, queries[:, 0]

    def forward(self, frames: torch.Tensor | None = None, audio: torch.Tensor | None = None, *,
                visual_maps: list[torch.Tensor] | None = None, image_size: tuple[int, int] | None = None) -> dict:
        if audio is None:
            raise ValueError("ICLAVSModel.forward needs audio (B, T, ...)")
        b, t = audio.shape[:2]
        if visual_maps is None:
            if frames is None or frames.dim() != 5 or frames.shape[:2] != (b, t):
                raise ValueError(f"ICLAVSModel: frames must be (B={b}, T={t}, 3, H, W), got "
                                 f"{None if frames is None else tuple(frames.shape)}")
            image_size = frames.shape[-2:]
            visual_maps = self.backbone(frames.flatten(0, 1))
        elif image_size is None:
            raise ValueError("ICLAVSModel: visual_maps need image_size=(H, W)")
        a = self.encode_audio(audio)
        top = self._context(visual_maps[-1], a, b, t)
        out: dict = {}
        text = text_cf = None
        if self.text is not None:
            query = (a + top.mean((-2, -1))).view(b, t, -1)
            sc = self.semantic(self.text(query, time_window(t, self.config.divisor)).flatten(0, 1))
            text, text_cf = sc["text"], sc.get("text_cf")
            out.update({k: sc[k] for k in ("z", "z_cf", "mu", "logvar") if k in sc})
            out["text"] = text
        branches = [("", text)] + ([("_cf", text_cf)] if text_cf is not None else [])
        for suffix, branch_text in branches:
            logits, pixels, query = self._decode(visual_maps, top, a, branch_text)
            logits = F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
            logits = logits.view(b, t, *logits.shape[1:])
            out["logits" + suffix] = logits[:, :, 0] if self.config.classes == 1 else logits
            out["pixels" + suffix], out["audio" + suffix] = pixels, query
            if suffix:
                out["text_cf"] = branch_text
        return out


# Losses -------------------------------------------------------------------------------------------


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice per frame (and class), averaged: ``1 - (2 sum(p g) + s) / (sum p + sum g + s)``.

    Binary: logits (N, H, W), target (N, H, W) in {0, 1}, p = sigmoid. Semantic: logits (N, K, H, W),
    target labels (N, H, W), p = softmax, g = one-hot, mean over frames and classes.
    """
    if logits.dim() == target.dim():
        p, g, dims = logits.sigmoid(), target.float(), (-2, -1)
    else:
        p = logits.softmax(1)
        g = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
        dims = (-2, -1)
    inter = (p * g).sum(dims)
    return (1 - (2 * inter + smooth) / (p.sum(dims) + g.sum(dims) + smooth)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Focal loss (Lin et al.), mean over pixels.

    Binary: ``-a_t (1 - p_t)^gamma log p_t`` with ``a_t = alpha`` on positives, ``1 - alpha`` on
    negatives (alpha < 0: no weighting). Semantic (logits (N, K, H, W), labels (N, H, W)):
    ``-(1 - p_y)^gamma log p_y`` (softmax form, no alpha).
    """
    if logits.dim() == target.dim():
        g = target.float()
        ce = F.binary_cross_entropy_with_logits(logits, g, reduction="none")
        p_t = torch.exp(-ce)
        loss = (1 - p_t) ** gamma * ce
        if alpha >= 0:
            loss = loss * (alpha * g + (1 - alpha) * (1 - g))
        return loss.mean()
    logp = logits.log_softmax(1).gather(1, target.long()[:, None])[:, 0]
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), mean over rows and latent dims: ``0.5 (mu^2 + e^lv - 1 - lv)``."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).mean()


def orthogonality_loss(z: torch.Tensor, z_cf: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``cos(z, z_cf)^2``: 0 when each counterfactual latent is orthogonal to its factual one."""
    return F.cosine_similarity(z, z_cf, dim=-1, eps=1e-8).pow(2).mean()


def masked_average_pool(features: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Masked average pooling: features (N, D, h, w), mask (N, H, W) weights -> (N, D).

    The mask is resized to (h, w) (area average); rows whose mask is empty fall back to the plain mean.
    """
    m = mask.float()
    if m.shape[-2:] != features.shape[-2:]:
        m = F.adaptive_avg_pool2d(m[:, None], features.shape[-2:])[:, 0]
    total = m.sum((-2, -1))
    pooled = (features * m[:, None]).sum((-2, -1)) / total.clamp_min(eps)[:, None]
    return torch.where((total > eps)[:, None], pooled, features.mean((-2, -1)))


def _segmentation_terms(logits, target, cfg: ICLAVSLossConfig) -> dict:
    if logits.dim() == target.dim():
        bce = F.binary_cross_entropy_with_logits(logits, target.float())
    else:
        bce = F.cross_entropy(logits, target.long())
    return {"bce": bce, "dice": dice_loss(logits, target),
            "focal": focal_loss(logits, target, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha)}


class ICLAVSLoss(nn.Module):
    """Every ICL-AVS loss term with the seed's weights: ``(outputs, masks, valid=None) -> (total, terms)``.

    masks: (B, T, H, W) binary (S4 / MS3) or labels (AVSS); valid: (B, T) bool, frames with a mask
    (AVSBench's S4 training split labels only the first frame). ``terms`` holds each unweighted term.

    - bce, dice, focal: on the factual logits (AVSS: cross-entropy, softmax Dice, softmax focal).
    - cf (our reading, the counterfactual "effect" supervision of counterfactual attention learning):
      the segmentation loss (BCE / CE) of ``logits - logits_cf``, so the factual text must explain the
      mask better than the counterfactual one.
    - ortho: ``orthogonality_loss(z, z_cf)``; z: ``kl_standard_normal(mu, logvar)`` (weight lambda_z).
    - cdcl = va * NCE(v, a) + al * NCE(a, l) + vl * NCE(v, l) (weights inside CDCL, seed's Table 1),
      each ``ops.contrastive_loss`` (symmetric InfoNCE, tau) on post-interaction features. Rows are
      factual and counterfactual samples together, so each factual pair's negatives include its own
      counterfactual (factual-counterfactual contrast) and the other samples (inter-sample contrast).
      ``contrast="frame"``: one row per frame (v: pooled decoder pixels, a: audio query, l: text);
      frames of the same clip are not negatives of each other (``positive_ids``).
      ``contrast="prototype"`` (the ablation): one row per clip, v = masked average pooling of the
      decoder pixels over the clip's ground-truth foreground, a and l = means over frames.
    """

    def __init__(self, config: ICLAVSLossConfig = ICLAVSLossConfig()):
        super().__init__()
        self.config = config

    def _nce(self, x, y, ids):
        return contrastive_loss(x.float(), y.float(), tau=self.config.tau, positive_ids=ids,
                                backend=self.config.backend)

    def _rows(self, out, masks, valid, suffix, b, t):
        """(v, a, l, ids) rows of one branch for the contrast strategy."""
        v, a, l = out["pixels" + suffix], out["audio" + suffix], out["text" + suffix]
        if self.config.contrast == "frame":
            return v.mean((-2, -1)), a, l, torch.arange(b, device=v.device).repeat_interleave(t)
        fg = (masks != 0).float() * valid[..., None, None].float()
        pooled = F.adaptive_avg_pool2d(fg.flatten(0, 1)[:, None], v.shape[-2:])[:, 0].view(b, t, *v.shape[-2:])
        clip_v = masked_average_pool(v.view(b, t, *v.shape[1:]).transpose(1, 2).flatten(2, 3),
                                     pooled.flatten(1, 2))
        return clip_v, a.view(b, t, -1).mean(1), l.view(b, t, -1).mean(1), torch.arange(b, device=v.device)

    def forward(self, out: dict, masks: torch.Tensor, valid: torch.Tensor | None = None):
        cfg = self.config
        logits = out["logits"]
        b, t = logits.shape[:2]
        if masks.shape[:2] != (b, t) or masks.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"ICLAVSLoss: masks {tuple(masks.shape)} do not match logits {tuple(logits.shape)}")
        valid = torch.ones(b, t, dtype=torch.bool, device=logits.device) if valid is None else valid.bool()
        sel_logits, sel_masks = logits[valid], masks[valid]
        terms = _segmentation_terms(sel_logits, sel_masks, cfg)
        has_cf = "logits_cf" in out
        if has_cf and cfg.cf:
            effect = sel_logits - out["logits_cf"][valid]
            binary = effect.dim() == sel_masks.dim()
            terms["cf"] = (F.binary_cross_entropy_with_logits(effect, sel_masks.float()) if binary
                           else F.cross_entropy(effect, sel_masks.long()))
        if "z_cf" in out and cfg.ortho:
            terms["ortho"] = orthogonality_loss(out["z"], out["z_cf"])
        if "mu" in out and cfg.z:
            terms["z"] = kl_standard_normal(out["mu"], out["logvar"])
        if "text" in out and cfg.cdcl:
            rows = [self._rows(out, masks, valid, "", b, t)]
            if has_cf:
                v, a, l, ids = self._rows(out, masks, valid, "_cf", b, t)
                rows.append((v, a, l, ids + b))
            v, a, l, ids = (torch.cat(parts) for parts in zip(*rows))
            terms["va"], terms["al"], terms["vl"] = self._nce(v, a, ids), self._nce(a, l, ids), self._nce(v, l, ids)
            terms["cdcl"] = cfg.va * terms["va"] + cfg.al * terms["al"] + cfg.vl * terms["vl"]
        weights = {"bce": cfg.bce, "dice": cfg.dice, "focal": cfg.focal, "cf": cfg.cf, "ortho": cfg.ortho,
                   "z": cfg.z, "cdcl": cfg.cdcl}
        total = sum(weights[k] * v for k, v in terms.items() if k in weights)
        return total, terms


# Builders -----------------------------------------------------------------------------------------


def _build(*, weights=None, **kw) -> ICLAVSModel:
    config = ICLAVSConfig(**kw)
    backbone = BACKBONES[config.backbone](weights=config.backbone_weights, backend=config.backend)
    model = ICLAVSModel(config, backbone)
    return load_state_dict_file(model, weights) if weights is not None else model


def build_icl_avs(*, task: str = "s4", weights=None, **kw) -> ICLAVSModel:
    """ICL-AVS with the paper's sizes (MiT-b2, dim 256, k^t 15) for ``task``; ``weights``: a local
    file of the whole model; ``backbone_weights``: a local MiT state_dict."""
    return _build(task=task, weights=weights, **kw)


def icl_avs_baseline(*, task: str = "s4", weights=None, **kw) -> ICLAVSModel:
    """The seed's baseline: MiT + channel-wise cross-attention + self-attention + bidirectional
    queries, without implicit text, counterfactual branch or CDCL."""
    return _build(task=task, weights=weights, implicit_text=False, counterfactual=False, **kw)


def icl_avs_tiny(*, task: str = "s4", weights=None, **kw) -> ICLAVSModel:
    """A CPU-sized ICL-AVS for tests and demos: MiT-tiny, dim 32, 2 heads, latent 16."""
    kw = {"backbone": "mit_tiny", "dim": 32, "heads": 2, "latent_dim": 16, **kw}
    return _build(task=task, weights=weights, **kw)
