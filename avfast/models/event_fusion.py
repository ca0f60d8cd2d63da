"""Seed 004: event-specific audio-visual fusion layers on the Table 1 backbones.

The seed's supplement lists which VGGSound categories each layer takes (onset / instant / continuous)
but does not define the layers, and the paper's public text we could reach (abstract: "event-specific
layers ... in a multi-task learning scheme") does not either. **These layers are our reading**
(``EventFusionConfig.definition = "ours"``, the only one implemented):

- per step ``l`` of the 10 Hz grid, each layer fuses ``f_l = MLP_layer([a_l; v_l])`` (audio step,
  video frame resampled to the grid) with **its own** MLP (event-specific fusion: a layer's features
  grow from its own gradient only);
- **onset layer** (rhythmic, repetitive events): onset-driven temporal pooling, the mean of the
  transient part ``g_l = f_l - mean_l f_l`` over the steps holding an audio onset
  (``avfast.audio.onset.onset_detect`` on the wave, or
  precomputed onsets as the seed's "precomputed onset envelopes"); zeros without onsets. Its audio
  is the audio network's conv3 map (20 ms positions, 110 ms receptive field), max-pooled over each
  step's 5 positions and projected to D (``onset_features="conv3"``): an fc9 step sees 0.71 s, two or
  three beats of a rhythmic sound, so onset pooling of fc9 steps is nearly a plain mean and the
  continuous layer won the rhythmic classes (``onset_features="steps"`` keeps that reading);
- **instant layer** (sudden, sparse events): sparse attention, a learned query over ``g_l`` whose
  keys are only the ``instant_k`` loudest steps (mean mel power; ``-inf`` bias elsewhere) through
  ``avfast.ops.cross_attention``;
- **continuous layer** (stationary, slowly evolving events): per-second averages of ``f_l``, then
  their mean.

Each layer's pooled feature goes through BatchNorm (the pools differ in scale: a mean over all steps
vs a few) and its own multi-label head. Objectives (``EventLossConfig.objective``): ``multitask``
(every layer's BCE against the clip's labels, the paper's "multi-task learning scheme") or
``compete`` (ours: the BCE of the clip's prediction, the max over layers, so layers compete per
category; plus a small multi-task term); the clip's prediction is the max over layers of their
sigmoid scores. ``layers`` switches layers off (e.g. ``("continuous",)`` for a plain late-fusion
baseline). A clip's *dominant layer* for one of its labels is the layer with the highest logit for
it; a category goes to the layer most of its clips choose (``assign_layers``: the seed's "event
characteristics of a dataset").
Localisation: ``localize`` scores every conv20 position against the audio step (cosine) through
``avfast.ops.affinity_topk``; ``localization_loss`` (ours, ``EventLossConfig.localization`` > 0)
trains those maps with an audio-visual spatial contrastive term.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avfast.models.event_backbones import EventAudioNet, EventBackboneConfig, EventVideoNet
from avfast.models.mit import load_state_dict_file

__all__ = ["LAYERS", "EventFusionConfig", "EventFusionNet", "EventFusionLoss", "EventLossConfig",
           "build_event_fusion", "event_fusion_tiny", "dominant_layers", "assign_layers", "format_layer_table",
           "onset_steps", "localization_loss"]

LAYERS = ("onset", "instant", "continuous")
ONSET_FEATURES = ("conv3", "steps")


@dataclass(frozen=True)
class EventFusionConfig:
    """Model settings; defaults: the seed's Table 1 backbones on 10 s clips, VGGSound's 309 classes."""

    classes: int = 309
    segments: int = 10               # seconds of audio (10 mel segments of 100 frames)
    frames: int = 100                # video frames (10 fps)
    frame_size: int = 112
    width: float = 1.0               # backbone width multiplier (1.0 = Table 1)
    hidden: int = 512                # fused feature size
    layers: tuple = LAYERS           # which event layers are on
    instant_k: int = 2               # steps kept by the instant layer's sparse attention
    onset_features: str = "conv3"    # the onset layer's audio: "conv3" (20 ms map, max per step) or "steps"
    definition: str = "ours"         # "ours": the reading above; the paper's own is not public
    sample_rate: int = 16000
    backend: str = "auto"            # ops backend (mel, attention, affinity)

    def __post_init__(self):
        if self.definition != "ours":
            raise NotImplementedError(f"definition={self.definition!r}: the paper's layer definitions are not in "
                                      "its public text; only our reading ('ours') is implemented")
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers or any(name not in LAYERS for name in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct names from {LAYERS} ({layers} given)")
        if self.classes < 1 or self.hidden < 1:
            raise ValueError(f"classes and hidden must be >= 1 ({self.classes}, {self.hidden} given)")
        if self.onset_features not in ONSET_FEATURES:
            raise ValueError(f"onset_features must be one of {ONSET_FEATURES} ({self.onset_features!r} given)")
        if not 1 <= self.instant_k <= self.segments * 10:
            raise ValueError(f"instant_k must be in [1, {self.segments * 10}] ({self.instant_k} given)")
        self.backbone  # validates the backbone sizes

    @property
    def backbone(self) -> EventBackboneConfig:
        return EventBackboneConfig(segments=self.segments, frames=self.frames, frame_size=self.frame_size,
                                   width=self.width)

    @property
    def steps(self) -> int:
        return self.segments * 10

    @property
    def samples(self) -> int:
        return self.segments * self.sample_rate


def onset_steps(onset_frames: torch.Tensor, steps: int) -> torch.Tensor:
    """Onset frames (B, F) bool at hop 10 ms -> (B, steps) bool: a step (100 ms) holds >= 1 onset."""
    b, n = onset_frames.shape
    need = steps * 10
    x = onset_frames[:, :need] if n >= need else F.pad(onset_frames, (0, need - n))
    return x.view(b, steps, 10).any(-1)


class EventFusionNet(nn.Module):
    """``forward(wave (B, S), frames (B, 3, T, H, W), onsets=None, mel=None)`` -> dict with ``logits (B, layers, C)``,
    ``scores (B, C)`` (max over layers of the sigmoids), ``audio (B, L, D)``, ``video (B, L, D)``,
    ``video_map (B, D, T, h, w)``, ``onsets (B, L)`` and ``energy (B, L)`` (mean mel power per step;
    L = 10 steps per second). ``mel (B, 10 S, 80)``
    (the ``event`` preset) replaces the wave's; ``onsets`` (B, L) or onset frames (B, F) at hop 10 ms."""

    def __init__(self, config: EventFusionConfig = EventFusionConfig()):
        super().__init__()
        from avfast.ops._mel_config import MelConfig

        self.config = c = config
        self.mel = MelConfig.preset("event", target_frames=c.segments * 100, layout="time_mel", masks=False)
        self.audio_net = EventAudioNet(c.backbone)
        self.video_net = EventVideoNet(c.backbone)
        d = c.backbone.dim
        # one fusion MLP per layer (event-specific fusion): a layer's features grow from its own gradient only
        self.fuse = nn.ModuleDict({name: nn.Sequential(nn.Linear(2 * d, c.hidden), nn.ReLU(inplace=True),
                                                       nn.Linear(c.hidden, c.hidden)) for name in c.layers})
        # the onset layer's audio: conv3's map (20 ms positions, 110 ms receptive field) max-pooled per step
        # and projected to D, sharp where the 10 Hz steps (0.71 s receptive field) blur a beat into its neighbours
        self.onset_tap = "conv3" if "onset" in c.layers and c.onset_features == "conv3" else None
        if self.onset_tap:
            channels, _, mels = self.audio_net.tap_shape(self.onset_tap)
            self.onset_proj = nn.Linear(channels * mels, d)
        self.query = nn.Parameter(torch.randn(c.hidden) * c.hidden ** -0.5) if "instant" in c.layers else None
        # BatchNorm on each layer's pooled feature: the layers' pooled features differ in scale (a mean over
        # 100 steps vs a few onset steps), which would otherwise decide which layer's logits grow first
        self.heads = nn.ModuleDict({name: nn.Sequential(nn.BatchNorm1d(c.hidden), nn.Linear(c.hidden, c.classes))
                                    for name in c.layers})

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, S) at 16 kHz -> the ``event`` preset's log-mel (B, 100 segments, 80)."""
        from avfast.ops import mel_spectrogram

        c = self.config
        if wave.dim() != 2 or wave.shape[1] < c.samples - c.sample_rate // 100:
            raise ValueError(f"EventFusionNet: wave must be (B, {c.samples}) at {c.sample_rate} Hz, "
                             f"got {tuple(wave.shape)}")
        return mel_spectrogram(wave.float(), self.mel, backend=c.backend)

    def audio_features(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, S) -> audio features (B, L, D) on the 10 Hz grid."""
        return self.audio_net(self.log_mel(wave))

    def _pool(self, name: str, f: torch.Tensor, onsets: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """One layer's pooling of fused features f (B, L, H) -> (B, H) (continuous: f (B, seconds, H));
        onsets (B, L) bool, energy (B, L)."""
        b, steps, h = f.shape
        if name == "continuous":
            return f.mean(1)                                             # f: per-second fused features
        g = f - f.mean(1, keepdim=True)                                  # transient part
        if name == "onset":
            w = onsets.to(f.dtype)
            return (w[..., None] * g).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
        from avfast.ops import cross_attention

        q = self.query.to(f.dtype).expand(b, 1, 1, -1)
        kv = g[:, None]
        with torch.no_grad():                                            # keys: the instant_k loudest steps
            top = energy.topk(self.config.instant_k, dim=-1).indices[:, None]           # (B, 1, k)
            bias = torch.full((b, 1, steps), float("-inf"), dtype=f.dtype, device=f.device)
            bias = bias.scatter_(-1, top, 0.0)[:, :, None]                             # (B, 1, 1, L)
        if f.device.type == "meta":  # shape inference: the ops' dispatch does not take meta tensors
            from avfast.ops.attention import cross_attention_reference

            return cross_attention_reference(q, kv, kv, attn_bias=bias)[0][:, 0, 0]
        return cross_attention(q, kv, kv, attn_bias=bias, backend=self.config.backend)[:, 0, 0]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.onset_tap and strict and not any(k.startswith("onset_proj.") for k in state_dict):
            raise RuntimeError("EventFusionNet: this checkpoint's onset layer reads the fc9 steps (written before "
                               "`onset_features`, whose default is now 'conv3'): build the model with "
                               "onset_features='steps' (CLI: --set model.onset_features=steps)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _onset_audio(self, tapped: torch.Tensor) -> torch.Tensor:
        """conv3's map (B, C, S, 50, M) -> (B, L, D): the max over each step's 5 positions, projected."""
        b, ch, seg, time, mels = tapped.shape
        x = tapped.permute(0, 2, 3, 1, 4).reshape(b, seg * 10, time // 10, ch * mels).amax(2)
        return self.onset_proj(x)

    def forward(self, wave: torch.Tensor | None, frames: torch.Tensor, onsets: torch.Tensor | None = None,
                mel: torch.Tensor | None = None) -> dict:
        c = self.config
        if mel is None and wave is None:
            raise ValueError("EventFusionNet: give wave (or a precomputed mel)")
        if onsets is None and wave is None:
            raise ValueError("EventFusionNet: with a precomputed mel give the onsets too")
        if mel is None:
            mel = self.log_mel(wave)
        a, tapped = self.audio_net.forward_with_tap(mel, self.onset_tap)   # (B, L, D)
        energy = mel.float().exp().mean(-1).view(mel.shape[0], c.steps, -1).mean(-1)  # (B, L) mel power per step
        vmap = self.video_net.feature_map(frames)                       # (B, D, T, h, w)
        v = vmap.mean((-1, -2)).transpose(1, 2)                         # (B, T, D)
        idx = (torch.arange(c.steps, device=v.device) * v.shape[1]) // c.steps
        v = v[:, idx]                                                   # nearest frame per step
        if onsets is None:
            from avfast.audio.onset import onset_detect

            with torch.no_grad():
                onsets = onset_steps(onset_detect(wave.float(), sample_rate=c.sample_rate, hop_length=160,
                                                  backend=c.backend), c.steps)
        elif onsets.shape[-1] != c.steps:
            onsets = onset_steps(onsets.bool(), c.steps)
        av = torch.cat([a, v], -1)                                      # (B, L, 2D)
        inputs = {"instant": av,
                  "onset": torch.cat([self._onset_audio(tapped), v], -1) if self.onset_tap else av,
                  "continuous": av.view(av.shape[0], c.segments, 10, -1).mean(2)}  # per second (B, seconds, 2D)
        logits = torch.stack([self.heads[name](self._pool(name, self.fuse[name](inputs[name]), onsets, energy))
                              for name in c.layers], 1)
        return {"logits": logits, "scores": logits.sigmoid().amax(1), "audio": a, "video": v,
                "video_map": vmap, "onsets": onsets, "energy": energy}

    @torch.no_grad()
    def localize(self, out: dict, steps: torch.Tensor) -> torch.Tensor:
        """Sound-source maps (B, h, w): cosine of the audio feature at ``steps (B,)`` with every
        conv20 position of the frame shown at that step (``ops.affinity_topk`` over all positions)."""
        from avfast.ops import affinity_topk

        vmap = out["video_map"]
        b, d, t, h, w = vmap.shape
        frame = (steps.long() * t) // self.config.steps
        pos = vmap[torch.arange(b), :, frame].flatten(2).transpose(1, 2).float()   # (B, h*w, D)
        audio = out["audio"][torch.arange(b), steps.long()].float()[:, None]      # (B, 1, D)
        vals, idx = affinity_topk(audio, pos, k=h * w, metric="cosine", backend=self.config.backend)
        return torch.zeros(b, 1, h * w, device=vals.device).scatter_(-1, idx, vals).view(b, h, w)


@dataclass
class EventLossConfig:
    """``objective="multitask"``: every layer's head against the clip's labels (BCE), averaged over
    layers (the paper's "multi-task learning scheme"). ``objective="compete"`` (ours): the BCE of the
    clip's own prediction, the max over layers of each class's logit (what ``scores`` reports), so for
    a positive label only the layer that explains it best gets the gradient and the layers compete
    per category (the paper then reads a category's layer off the most confident one), plus
    ``layer_weight`` x the multi-task term to keep every head calibrated."""

    objective: str = "multitask"
    layer_weight: float = 1.0        # multitask: scale of the loss; compete: weight of the multi-task term
    localization: float = 0.0        # weight of ``localization_loss`` (ours; 0 = the seed's objective)
    localization_steps: int = 2      # loudest steps per clip in that term
    localization_tau: float = 0.07

    def __post_init__(self):
        if self.objective not in ("multitask", "compete"):
            raise ValueError(f"loss.objective must be 'multitask' or 'compete' ({self.objective!r} given)")
        if self.layer_weight < 0 or self.localization < 0:
            raise ValueError(f"loss.layer_weight and loss.localization must be >= 0 "
                             f"({self.layer_weight}, {self.localization} given)")
        if self.localization_steps < 1 or self.localization_tau <= 0:
            raise ValueError(f"loss.localization_steps must be >= 1 and loss.localization_tau > 0 "
                             f"({self.localization_steps}, {self.localization_tau} given)")


class EventFusionLoss(nn.Module):
    """``(out, labels (B, C) multi-hot)`` -> (total, {"bce_<layer>": ..., ["bce_clip": ...]})."""

    def __init__(self, config: EventLossConfig = EventLossConfig(), layers=LAYERS):
        super().__init__()
        self.config, self.layers = config, tuple(layers)

    def forward(self, out: dict, labels: torch.Tensor):
        logits = out["logits"].float()
        if labels.shape != (logits.shape[0], logits.shape[2]):
            raise ValueError(f"labels must be (B, C) = {(logits.shape[0], logits.shape[2])}, got {tuple(labels.shape)}")
        terms = {f"bce_{name}": F.binary_cross_entropy_with_logits(logits[:, i], labels.float())
                 for i, name in enumerate(self.layers)}
        total = self.config.layer_weight * sum(terms.values()) / len(terms)
        if self.config.objective == "compete":
            terms["bce_clip"] = F.binary_cross_entropy_with_logits(logits.amax(1), labels.float())
            total = total + terms["bce_clip"]
        if self.config.localization:
            terms["localization"] = localization_loss(out, steps=self.config.localization_steps,
                                                      tau=self.config.localization_tau)
            total = total + self.config.localization * terms["localization"]
        return total, terms


def localization_loss(out: dict, *, steps: int = 2, tau: float = 0.07, attention_tau: float = 0.1,
                      backend: str = "auto") -> torch.Tensor:
    """Audio-visual spatial contrastive term (ours, after Senocak et al. 2018 / LVS; not in the seed).

    For the ``steps`` loudest 10 Hz steps of each clip (``out["energy"]``, no labels used): the
    L2-normalised audio feature ``a`` (B, L, D) attends over the normalised conv20 positions ``p`` of
    the frame shown at that step, ``z = softmax(a . p / attention_tau) p`` (``ops.cross_attention``),
    and ``ops.contrastive_loss(a, z, tau)`` (InfoNCE, both directions) pairs each audio step with its
    own frame's attended feature against the other clips' (other steps of the same clip are not
    negatives). The attention logits are ``localize``'s cosine map / attention_tau, so the term trains
    exactly the maps ``localize`` reads. -> 0-d loss."""
    from avfast.ops import contrastive_loss, cross_attention

    a, vmap, energy = out["audio"], out["video_map"], out["energy"]
    b, length, _ = a.shape
    t = vmap.shape[2]
    m = min(steps, length)
    step = energy.detach().topk(m, dim=1).indices.reshape(-1)                      # (N,) N = B m
    clip = torch.arange(b, device=a.device).repeat_interleave(m)
    audio = F.normalize(a[clip, step].float(), dim=-1)                              # (N, D)
    pos = F.normalize(vmap[clip, :, (step * t) // length].flatten(2).transpose(1, 2).float(), dim=-1)  # (N, hw, D)
    z = cross_attention(audio[:, None, None], pos[:, None], pos[:, None], scale=1.0 / attention_tau,
                        backend=backend)[:, 0, 0]
    return contrastive_loss(audio, z, tau=tau, positive_ids=clip, backend=backend)


def _build(config: EventFusionConfig, weights=None) -> EventFusionNet:
    model = EventFusionNet(config)
    return load_state_dict_file(model, weights) if weights is not None else model


def build_event_fusion(*, weights=None, **overrides) -> EventFusionNet:
    """The seed's network: Table 1 backbones (10 s, 100 x 112^2), three event layers, 309 classes."""
    return _build(EventFusionConfig(**overrides), weights)


def event_fusion_tiny(*, weights=None, **overrides) -> EventFusionNet:
    """CPU-sized: 3 s clips, 30 frames of 32^2, width 1/16, hidden 64."""
    kw = dict(segments=3, frames=30, frame_size=32, width=0.0625, hidden=64)
    kw.update(overrides)
    return _build(EventFusionConfig(**kw), weights)


def dominant_layers(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (clip, positive label): the layer with the highest logit for that label.

    logits (B, layers, C), labels (B, C) multi-hot -> (categories (P,), layers (P,)) long."""
    clip, cat = labels.bool().nonzero(as_tuple=True)
    return cat, logits[clip, :, cat].argmax(-1)


def assign_layers(categories: torch.Tensor, layers: torch.Tensor, num_layers: int, num_classes: int) -> torch.Tensor:
    """Majority vote of the clips' dominant layers per category -> (C,) layer index (-1: no clip;
    ties to the lower layer index)."""
    votes = torch.zeros(num_classes, num_layers, dtype=torch.long)
    votes.index_put_((categories.cpu(), layers.cpu()), torch.ones_like(categories.cpu()), accumulate=True)
    out = votes.argmax(1)
    out[votes.sum(1) == 0] = -1
    return out


def format_layer_table(assignment: torch.Tensor, layer_names, class_names=None) -> str:
    """The category -> layer table as text, one line per category."""
    names = class_names or [f"class_{i}" for i in range(len(assignment))]
    width = max(len(n) for n in names)
    lines = [f"{'category':<{width}}  layer"]
    for i, a in enumerate(assignment.tolist()):
        lines.append(f"{names[i]:<{width}}  {layer_names[a] if a >= 0 else '-'}")
    return "\n".join(lines)


def config_from_dict(d: dict) -> EventFusionConfig:
    """EventFusionConfig from a plain dict (lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(EventFusionConfig)}
    return EventFusionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})
