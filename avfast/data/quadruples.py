"""Seed 001's dub-augmented quadruples (v_p, a_p, v_s, a_s): which windows and tracks to read.

Recipe: pick a shot; draw two windows of ``window`` seconds (3 s; the paper writes max(T, 3) with T
the shot length, read here as min(T, 3) = 3 s windows at random starts, see DESIGN.md) at random
starts inside it; the primary window takes the original-language track, the secondary window takes
a dub (another language) when the shot has one.

Variants (``Variant.parse``):

- ``"monolingual"``: a_s is the primary language again (a second augmentation; the SimCLR baseline).
- ``"bilingual:es"``: a_s is the ``es`` dub (primary language when a shot has no ``es`` track).
- ``"multilingual"`` / ``"multilingual:es,fr,ja"``: a_s cycles through the dub languages, one
  language per batch (round-robin on the batch step; shots lacking it take the next one they have).
- ``"no_speech"``: a_p is the separated (speech-free) track; no secondary audio.
- ``"audio_only"`` / ``"audio_only:monolingual"`` / ``"audio_only:es,fr"``: no video; secondary as in
  multilingual (or monolingual).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avfast.data.errors import DataError
from avfast.data.manifest import Clip

__all__ = ["Variant", "Window", "QuadruplePlan", "plan_quadruple"]


@dataclass(frozen=True)
class Variant:
    """What a training example holds: ``secondary`` "same" | "dub" | "none", the dub ``languages``
    (None: any language other than the primary), ``video`` on/off, ``separated`` primary track."""

    name: str
    secondary: str = "dub"
    languages: tuple[str, ...] | None = None
    video: bool = True
    separated: bool = False

    @classmethod
    def parse(cls, spec: "str | Variant") -> "Variant":
        if isinstance(spec, Variant):
            return spec
        name, _, arg = spec.partition(":")
        langs = tuple(x.strip() for x in arg.split(",") if x.strip()) or None
        if name == "monolingual" and not arg:
            return cls(name, secondary="same")
        if name == "bilingual" and langs and len(langs) == 1:
            return cls(name, languages=langs)
        if name == "multilingual":
            return cls(name, languages=langs)
        if name == "no_speech" and not arg:
            return cls(name, secondary="none", separated=True)
        if name == "audio_only":
            if arg == "monolingual":
                return cls(name, secondary="same", video=False)
            return cls(name, languages=langs, video=False)
        raise ValueError(f"unknown variant {spec!r}: use monolingual, bilingual:<lang>, multilingual[:l1,l2], "
                         "no_speech, audio_only[:monolingual|:l1,l2]")


@dataclass(frozen=True)
class Window:
    """One (video window, audio track) half of a quadruple; ``track`` is a language or ``"separated"``."""

    start: float
    duration: float
    track: str


@dataclass(frozen=True)
class QuadruplePlan:
    primary: Window
    secondary: Window | None


def _secondary_language(clip: Clip, primary: str, variant: Variant, rng: np.random.Generator,
                        step: int | None) -> str:
    if variant.secondary == "same":
        return primary
    dubs = [lang for lang in clip.languages if lang != primary]
    if variant.languages is not None:
        order = [lang for lang in variant.languages if lang != primary]
    else:
        order = dubs
    if not dubs or not order:
        return primary  # no dub for this shot: the paper falls back to the original track
    if step is None:  # no batch step known: draw
        have = [lang for lang in order if lang in dubs]
        return str(rng.choice(have)) if have else primary
    for k in range(len(order)):  # round-robin per batch; skip languages this shot lacks
        lang = order[(step + k) % len(order)]
        if lang in dubs:
            return lang
    return primary


def plan_quadruple(clip: Clip, variant: Variant, window: float, rng: np.random.Generator,
                   step: int | None = None, primary: str | None = None) -> QuadruplePlan:
    """Windows and tracks of one example from ``clip`` (a shot). ``primary``: the primary language
    (seed 001 B.3: ``en``; default the clip's own ``primary``); dubs are the other languages.
    Raises ``DataError`` when the shot is shorter than ``window`` or the variant needs a track the
    shot lacks (the primary language included)."""
    if clip.duration < window - 1e-6:
        raise DataError(clip.video, f"shot [{clip.start:.3f}, {clip.end:.3f}) s is {clip.duration:.3f} s, "
                                    f"shorter than the {window} s window")
    if variant.separated and not clip.separated:
        raise DataError(clip.video, "variant no_speech needs a separated track ('separated' in the manifest)")
    if clip.primary is None:
        raise DataError(clip.video, "clip has no audio track")
    language = primary or clip.primary
    if language not in clip.audio and not variant.separated:
        raise DataError(clip.video, f"no track in the primary language {language!r} (data.primary_language); "
                                    f"tracks: {clip.languages}")
    slack = clip.duration - window
    starts = clip.start + slack * rng.random(2)
    first = Window(float(starts[0]), window, "separated" if variant.separated else language)
    if variant.secondary == "none":
        return QuadruplePlan(first, None)
    second = _secondary_language(clip, language, variant, rng, step)
    return QuadruplePlan(first, Window(float(starts[1]), window, second))
