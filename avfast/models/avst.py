"""Seed 003: AVST, spatio-temporal grounding for audio-visual question answering (MUSIC-AVQA).

For a clip of T one-second segments (T = 10), in the public code's order (net_avst.py):

1. Audio: 128-d VGGish-style features per segment from files, or ``MelAudioEncoder`` on
   ``ops.mel_spectrogram`` of the segment's wave -> Linear -> ReLU -> Linear -> ``dim`` (512).
   Visual: 512 x 14 x 14 ResNet-18 maps per segment from files, or our ``resnet18`` on frames.
   Question: word embeddings -> tanh -> LSTM -> [h; c] -> tanh -> Linear -> ``dim``.
2. Audio-guided spatial grounding (SG): per segment, the unscaled dot product of the L2-normalised
   audio vector with the L2-normalised visual vectors at the h*w positions, softmax over positions,
   and the attended (normalised) visual vector: one-query attention with scale 1 through
   ``ops.cross_attention``. The segment's visual vector is ``Linear(tanh([pooled; attended]))``.
   A match head (MLP -> 2) tells the clip's own visual maps (positive) from another clip's
   (negative) for the same audio; trained with CE (the "match" loss).
3. Question-guided temporal grounding (TG): ``nn.CrossModalAttention(dim, 4)`` with the question as
   the query over the T audio vectors, and another over the T visual vectors, each followed by a
   residual feed-forward and LayerNorm; the T-average is added to each.
4. Fusion: concat -> tanh -> Linear -> times the question -> tanh -> Linear(42 answers).

The seed's ablation ladder is the config switches ``use_audio``, ``use_visual``,
``temporal_grounding``, ``spatial_grounding`` (Q, A+Q, V+Q, AV+Q, +TG, +SG). Without TG the T
vectors are averaged; without SG the segment's visual vector is ``Linear(pooled)``.
``temporal_positions`` (our addition, off in the public code's configs) adds a learned embedding (init N(0, 1)) of
the segment index before TG so that "which sounds first" is answerable by attention.

Loss (``AVSTLoss``): CE_qa + 0.5 CE_match.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from avfast.models.icl_avs import MelAudioEncoder
from avfast.models.mit import load_state_dict_file
from avfast.models.resnet2d import ResNet2dConfig, ResNet2d
from avfast.nn.attention import CrossModalAttention
from avfast.ops import cross_attention

__all__ = ["AVSTConfig", "AVSTLossConfig", "AVSTModel", "AVSTLoss", "QuestionEncoder", "spatial_grounding",
           "negative_visual", "build_avst", "avst_tiny", "ABLATIONS"]

# the seed's ablation ladder: name -> (use_audio, use_visual, temporal_grounding, spatial_grounding)
ABLATIONS = {"q": (False, False, False, False), "a_q": (True, False, False, False),
             "v_q": (False, True, False, False), "av_q": (True, True, False, False),
             "av_q_tg": (True, True, True, False), "av_q_tg_sg": (True, True, True, True)}


@dataclasses.dataclass(frozen=True)
class AVSTConfig:
    """AVST sizes and switches (defaults: the paper's full model on MUSIC-AVQA features)."""

    dim: int = 512                   # audio / visual / question feature size
    audio_dim: int = 128             # VGGish-style features per segment (files) or MelAudioEncoder output
    visual_dim: int = 512            # channels of the visual maps (ResNet-18: 512)
    segments: int = 10               # T
    vocab_size: int = 93             # question words incl. <pad> = 0 (public MUSIC-AVQA vocabulary: 93)
    answers: int = 42
    heads: int = 4                   # temporal grounding attention heads
    dropout: float = 0.1
    audio_input: str = "features"    # features | wave (MelAudioEncoder on ops.mel_spectrogram)
    visual_input: str = "features"   # features (maps) | frames (our resnet18, no weights)
    visual_width: int = 64           # resnet width for visual_input="frames" (8 * width = visual_dim)
    use_audio: bool = True
    use_visual: bool = True
    temporal_grounding: bool = True
    spatial_grounding: bool = True
    temporal_positions: bool = False
    backend: str = "auto"            # ops backend of the grounding attentions

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"AVSTConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.spatial_grounding and not (self.use_audio and self.use_visual):
            raise ValueError("AVSTConfig: spatial_grounding needs use_audio and use_visual")
        if self.temporal_grounding and not (self.use_audio or self.use_visual):
            raise ValueError("AVSTConfig: temporal_grounding needs audio or visual input")
        if self.spatial_grounding and self.visual_dim != self.dim:
            raise ValueError(f"AVSTConfig: spatial grounding compares audio (dim={self.dim}) with visual maps "
                             f"(visual_dim={self.visual_dim}); they must be equal")
        if self.audio_input not in ("features", "wave") or self.visual_input not in ("features", "frames"):
            raise ValueError(f"AVSTConfig: audio_input must be features|wave and visual_input features|frames, "
                             f"got {self.audio_input!r}, {self.visual_input!r}")
        if self.visual_input == "frames" and 8 * self.visual_width != self.visual_dim:
            raise ValueError(f"AVSTConfig: resnet width {self.visual_width} gives {8 * self.visual_width} channels, "
                             f"visual_dim is {self.visual_dim}")
        if min(self.dim, self.audio_dim, self.visual_dim, self.segments, self.vocab_size, self.answers) < 1:
            raise ValueError("AVSTConfig: sizes must be >= 1")


@dataclasses.dataclass(frozen=True)
class AVSTLossConfig:
    match_weight: float = 0.5        # CE_qa + 0.5 CE_match

    def __post_init__(self):
        if self.match_weight < 0:
            raise ValueError(f"AVSTLossConfig.match_weight must be >= 0 ({self.match_weight} given)")


# Blocks -------------------------------------------------------------------------------------------


def spatial_grounding(audio: torch.Tensor, visual: torch.Tensor, *, return_maps: bool = False,
                      backend: str = "auto"):
    """Audio-guided grounding: softmax over positions of <a/|a|, v_p/|v_p|> (scale 1), attended v/|v|.

    audio (N, D), visual (N, P, D) -> attended (N, D) [, maps (N, P) summing to 1 over P]. The
    attention runs in ``ops.cross_attention`` (one query, one head, head dim D); the maps, when
    asked for, are the dense softmax of the same scores.
    """
    if audio.dim() != 2 or visual.dim() != 3 or visual.shape[0] != audio.shape[0] or visual.shape[2] != audio.shape[1]:
        raise ValueError(f"spatial_grounding: expected audio (N, D) and visual (N, P, D), got "
                         f"{tuple(audio.shape)} and {tuple(visual.shape)}")
    a = F.normalize(audio, dim=-1)
    v = F.normalize(visual, dim=-1)
    attended = cross_attention(a[:, None, None], v[:, None], v[:, None], scale=1.0, backend=backend)[:, 0, 0]
    if not return_maps:
        return attended
    maps = torch.softmax(torch.einsum("nd,npd->np", a, v), dim=-1)
    return attended, maps


def negative_visual(visual: torch.Tensor) -> torch.Tensor:
    """Another clip's visual input for each clip (the batch rolled by one): (B, ...) -> (B, ...)."""
    if visual.shape[0] < 2:
        raise ValueError("negative_visual: the match loss needs at least 2 clips per batch")
    return visual.roll(1, dims=0)


class QuestionEncoder(nn.Module):
    """Token ids (B, L), 0 = padding -> (B, dim): embedding -> tanh -> LSTM -> tanh([h; c]) -> Linear."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.fc = nn.Linear(2 * dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"QuestionEncoder: expected integer token ids (B, L), got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        if int(tokens.max()) >= self.embed.num_embeddings or int(tokens.min()) < 0:
            raise ValueError(f"QuestionEncoder: token ids must be in [0, {self.embed.num_embeddings}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        lengths = (tokens != 0).sum(1).clamp(min=1).cpu()
        x = torch.tanh(self.embed(tokens.long()))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, c) = self.lstm(packed)
        return self.fc(torch.tanh(torch.cat([h[-1], c[-1]], dim=-1)))


class _TemporalGrounding(nn.Module):
    """Question-guided attention over T segment vectors, residual feed-forward and LayerNorm."""

    def __init__(self, dim: int, heads: int, dropout: float, backend: str):
        super().__init__()
        self.attn = CrossModalAttention(dim, heads, dropout=dropout, backend=backend)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, question: torch.Tensor, seq: torch.Tensor, need_weights: bool = False):
        """question (B, dim), seq (B, T, dim) -> ((B, dim), weights (B, T) or None)."""
        out, weights = self.attn(question[:, None], seq, seq, need_weights=need_weights)
        out = out[:, 0]
        out = self.norm(out + self.drop(self.ff(out)))
        return out, None if weights is None else weights[:, 0]


def _match_head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim // 2),
                         nn.ReLU(inplace=True), nn.Linear(dim // 2, max(dim // 4, 1)), nn.ReLU(inplace=True),
                         nn.Linear(max(dim // 4, 1), 2))


# Model --------------------------------------------------------------------------------------------


class AVSTModel(nn.Module):
    """AVST. ``forward(audio, visual, question, visual_neg=None, return_maps=False)``:

    audio (B, T, audio_dim) features or (B, T, samples) waves; visual (B, T, C, h, w) maps or
    (B, T, 3, H, W) frames; question (B, L) token ids. Returns a dict: ``logits`` (B, answers);
    with SG ``match_pos`` (B*T, 2) and, given ``visual_neg`` (another clip's visual input),
    ``match_neg`` (B*T, 2); with ``return_maps`` ``maps`` (B, T, h*w) (SG) and ``temporal``
    ``{"audio", "visual"}`` (B, T) attention weights (TG).
    """

    def __init__(self, config: AVSTConfig = AVSTConfig()):
        super().__init__()
        c = self.config = config
        d = c.dim
        self.question = QuestionEncoder(c.vocab_size, d)
        if c.use_audio:
            wave = c.audio_input == "wave"
            self.wave_encoder = MelAudioEncoder(out_dim=c.audio_dim, backend=c.backend) if wave else None
            self.audio_fc = nn.Sequential(nn.Linear(c.audio_dim, d), nn.ReLU(inplace=True), nn.Linear(d, d))
        if c.use_visual:
            self.visual_net = (ResNet2d(ResNet2dConfig(width=c.visual_width)) if c.visual_input == "frames" else None)
            self.visual_fc = nn.Linear(2 * c.visual_dim if c.spatial_grounding else c.visual_dim, d)
        if c.spatial_grounding:
            self.match = _match_head(d)
        if c.temporal_grounding:
            self.tg_audio = _TemporalGrounding(d, c.heads, c.dropout, c.backend) if c.use_audio else None
            self.tg_visual = _TemporalGrounding(d, c.heads, c.dropout, c.backend) if c.use_visual else None
            self.positions = nn.Parameter(torch.randn(c.segments, d)) if c.temporal_positions else None
        n_modalities = int(c.use_audio) + int(c.use_visual)
        self.fusion = nn.Linear(n_modalities * d, d) if n_modalities else None
        self.answer = nn.Linear(d, c.answers)

    def _check(self, audio, visual, question):
        c = self.config
        b = question.shape[0]
        if c.use_audio:
            want = 2 if c.audio_input == "features" else 1
            if audio is None or audio.dim() != 3 or audio.shape[0] != b or audio.shape[1] != c.segments or \
                    (want == 2 and audio.shape[2] != c.audio_dim):
                raise ValueError(f"AVST: expected audio (B={b}, T={c.segments}, "
                                 f"{c.audio_dim if want == 2 else 'samples'}), got "
                                 f"{None if audio is None else tuple(audio.shape)}")
        if c.use_visual:
            ch = c.visual_dim if c.visual_input == "features" else 3
            if visual is None or visual.dim() != 5 or visual.shape[:3] != (b, c.segments, ch):
                raise ValueError(f"AVST: expected visual (B={b}, T={c.segments}, {ch}, h, w), got "
                                 f"{None if visual is None else tuple(visual.shape)}")

    def _visual_maps(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B*T, h*w, C)."""
        x = visual.flatten(0, 1)
        if self.visual_net is not None:
            x = self.visual_net(x)
        return x.flatten(2).transpose(1, 2)

    def _audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T, audio_dim | samples) -> (B*T, dim)."""
        x = audio.flatten(0, 1)
        if self.wave_encoder is not None:
            x = self.wave_encoder(x)
        return self.audio_fc(x)

    def _segment_visual(self, maps, audio, return_maps):
        """Per-segment visual vectors (B*T, dim) (grounded with SG), plus the maps when asked."""
        pooled = maps.mean(1)
        if not self.config.spatial_grounding:
            return self.visual_fc(pooled), None
        grounded = spatial_grounding(audio, maps, return_maps=return_maps, backend=self.config.backend)
        grounded, grid = grounded if return_maps else (grounded, None)
        return self.visual_fc(torch.tanh(torch.cat([pooled, grounded], dim=-1))), grid

    def _temporal(self, tg, q, seq, return_maps):
        """Temporal grounding of (B, T, dim) by the question (plus the T-average), or the T-average."""
        if tg is None:
            return seq.mean(1), None
        keys = seq if self.positions is None else seq + self.positions
        out, weights = tg(q, keys, need_weights=return_maps)
        return out + seq.mean(1), weights

    def forward(self, audio, visual, question, visual_neg=None, return_maps: bool = False) -> dict:
        c = self.config
        self._check(audio, visual, question)
        b, t = question.shape[0], c.segments
        q = self.question(question)
        out, feats = {}, []
        tg = c.temporal_grounding
        a = self._audio(audio) if c.use_audio else None
        if c.use_audio:
            seq, w = self._temporal(self.tg_audio if tg else None, q, a.view(b, t, -1), return_maps)
            feats.append(seq)
            if w is not None:
                out.setdefault("temporal", {})["audio"] = w
        if c.use_visual:
            v, grid = self._segment_visual(self._visual_maps(visual), a, return_maps)
            if grid is not None:
                out["maps"] = grid.view(b, t, -1)
            if c.spatial_grounding:
                out["match_pos"] = self.match(torch.cat([a, v], dim=-1))
                if visual_neg is not None:
                    v_neg, _ = self._segment_visual(self._visual_maps(visual_neg), a, False)
                    out["match_neg"] = self.match(torch.cat([a, v_neg], dim=-1))
            seq, w = self._temporal(self.tg_visual if tg else None, q, v.view(b, t, -1), return_maps)
            feats.append(seq)
            if w is not None:
                out.setdefault("temporal", {})["visual"] = w
        if feats:
            fused = torch.tanh(self.fusion(torch.tanh(torch.cat(feats, dim=-1))) * q)
        else:
            fused = torch.tanh(q)
        out["logits"] = self.answer(fused)
        return out


class AVSTLoss(nn.Module):
    """CE_qa + match_weight * CE_match (match: positive maps -> 1, negative -> 0, per segment)."""

    def __init__(self, config: AVSTLossConfig = AVSTLossConfig()):
        super().__init__()
        self.config = config

    def forward(self, out: dict, answers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """out: the model's dict; answers (B,) answer indices -> (total, {"qa", "match"})."""
        terms = {"qa": F.cross_entropy(out["logits"], answers)}
        if "match_neg" in out:
            logits = torch.cat([out["match_pos"], out["match_neg"]])
            n = out["match_pos"].shape[0]
            labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)]).to(logits.device)
            terms["match"] = F.cross_entropy(logits, labels)
        total = terms["qa"] + self.config.match_weight * terms.get("match", 0.0)
        return total, terms


# Builders -----------------------------------------------------------------------------------------


def _build(*, weights=None, **kw) -> AVSTModel:
    model = AVSTModel(AVSTConfig(**kw))
    return load_state_dict_file(model, weights) if weights is not None else model


def build_avst(*, ablation: str = "av_q_tg_sg", weights=None, **kw) -> AVSTModel:
    """AVST with the paper's sizes (dim 512, 4 heads, T 10, 42 answers) at a rung of the seed's
    ablation ladder (``ABLATIONS``: q, a_q, v_q, av_q, av_q_tg, av_q_tg_sg)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown AVST ablation {ablation!r}; choose from {sorted(ABLATIONS)}")
    flags = dict(zip(("use_audio", "use_visual", "temporal_grounding", "spatial_grounding"), ABLATIONS[ablation]))
    return _build(weights=weights, **{**flags, **kw})


def avst_tiny(*, ablation: str = "av_q_tg_sg", weights=None, **kw) -> AVSTModel:
    """A CPU-sized AVST (dim 64, 2 heads) for tests and demos."""
    return build_avst(ablation=ablation, weights=weights, **{"dim": 64, "visual_dim": 64, "heads": 2, **kw})
