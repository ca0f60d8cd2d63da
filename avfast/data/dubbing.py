"""``avfast dub``: synthesise a dubbed audio track (seed 001, section D: counterfactual pairs).

Modular pipeline, each stage a plug-in (offline by default):

1. transcript: a subtitle file (.srt / .vtt) of the original language, or an ASR plug-in
   (``"whisper"``: openai-whisper, when installed);
2. translation: a subtitle file of the target language, or an MT plug-in (``"argos"``:
   argostranslate, ``"marian"``: transformers MarianMT; each raises a clear error when missing);
3. TTS: ``"espeak"`` (espeak-ng, the default) or a registered plug-in;
4. time-fit: each line is fitted to its cue's slot (faster speech rate, then time-stretch up to
   ``max_speedup``, then a faded cut);
5. mix over a background: ``"duck"`` (the original track, lowered under each line), ``"none"``,
   a file (e.g. a music-and-effects track) or ``"demucs"`` (source separation, when installed).

``register_plugin(kind, name, factory)`` adds a transcriber / translator / tts / separator.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avfast.data.audio import iso639_2, load_audio, save_audio
from avfast.data.errors import DataError

__all__ = ["Cue", "read_subtitles", "write_subtitles", "time_stretch", "fit_to_slot", "register_plugin",
           "DubPipeline", "mux_track"]


@dataclass(frozen=True)
class Cue:
    """One subtitle line: ``[start, end)`` seconds and its text."""

    start: float
    end: float
    text: str


_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")


def _seconds(stamp: str) -> float:
    m = _TIME.fullmatch(stamp.strip())
    if not m:
        raise ValueError(f"bad time stamp {stamp!r}")
    h, mnt, s, ms = m.groups()
    return int(h or 0) * 3600 + int(mnt) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def read_subtitles(path) -> list[Cue]:
    """Cues of an SRT or WebVTT file (formatting tags removed, lines of a cue joined)."""
    path = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(path, "subtitle file does not exist") from exc
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [l for l in block.strip().split("\n") if l.strip()]
        at = next((i for i, l in enumerate(lines) if "-->" in l), None)
        if at is None:
            continue
        a, b = lines[at].split("-->")
        try:
            start, end = _seconds(a), _seconds(b.split()[0])
        except ValueError as exc:
            raise DataError(path, f"{exc} in cue {lines[at]!r}") from exc
        words = re.sub(r"<[^>]+>|\{[^}]+\}", "", " ".join(lines[at + 1:])).strip()
        if words and end > start:
            cues.append(Cue(start, end, words))
    if not cues:
        raise DataError(path, "no subtitle cues found (expected SRT or WebVTT)")
    return sorted(cues, key=lambda c: c.start)


def write_subtitles(path, cues: list[Cue]) -> Path:
    """Write cues as SRT."""
    def stamp(t):
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    body = "\n".join(f"{i}\n{stamp(c.start)} --> {stamp(c.end)}\n{c.text}\n" for i, c in enumerate(cues, 1))
    Path(path).write_text(body, encoding="utf-8")
    return Path(path)


def time_stretch(wave: np.ndarray, rate: float, frame: int = 1024) -> np.ndarray:
    """WSOLA time stretch: ``rate`` > 1 shortens (faster speech) without changing pitch.

    Output frames overlap by half; each input frame is taken near its nominal position ``k * hop *
    rate``, shifted (within a quarter frame) to best continue the previous one, so periods line up.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0 ({rate} given)")
    x = np.asarray(wave, dtype=np.float64)
    if len(x) < 2 * frame or abs(rate - 1.0) < 1e-3:
        return x.astype(np.float32)
    hop, tol = frame // 2, frame // 4
    x = np.pad(x, (tol, frame + tol))
    win = np.hanning(frame)
    n_frames = int((len(wave) - frame) / (hop * rate)) + 1
    out = np.zeros(hop * (n_frames - 1) + frame)
    norm = np.zeros_like(out)
    pos = tol  # input position of the previous frame (padded coordinates)
    for k in range(n_frames):
        nominal = tol + int(round(k * hop * rate))
        if k:
            template = x[pos + hop: pos + hop + frame]  # what naturally follows the previous frame
            region = x[nominal - tol: nominal + tol + frame]
            pos = nominal - tol + int(np.argmax(np.correlate(region, template, mode="valid")))
        else:
            pos = nominal
        out[k * hop: k * hop + frame] += x[pos: pos + frame] * win
        norm[k * hop: k * hop + frame] += win
    return (out / np.maximum(norm, 1e-3)).astype(np.float32)


def fit_to_slot(wave: np.ndarray, slot: int, max_speedup: float = 1.6) -> tuple[np.ndarray, float]:
    """Fit a line into ``slot`` samples: pad, or speed up (at most ``max_speedup``), then cut with
    a fade. Returns the fitted wave (slot,) and the speed-up applied."""
    rate = 1.0
    if len(wave) > slot:
        rate = min(len(wave) / slot, max_speedup)
        wave = time_stretch(wave, rate)
    wave = wave[:slot].astype(np.float32)
    fade = min(len(wave) // 8, 480)
    if fade:
        wave[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return np.pad(wave, (0, slot - len(wave))), rate


# ---- plug-ins -----------------------------------------------------------------------------------

_PLUGINS: dict[str, dict[str, Callable]] = {"transcriber": {}, "translator": {}, "tts": {}, "separator": {}}


def register_plugin(kind: str, name: str, factory: Callable) -> None:
    """Register ``factory(**options) -> plug-in`` under ``kind`` ("transcriber", "translator",
    "tts", "separator"). Protocols: transcriber ``(wave (N,), sample_rate, language) -> [Cue]``;
    translator ``(texts, source, target) -> [str]``; tts ``(text, language, sample_rate, speed) ->
    float (N,)``; separator ``(wave (C, N), sample_rate) -> background (C, N)``."""
    if kind not in _PLUGINS:
        raise ValueError(f"kind must be one of {sorted(_PLUGINS)} ({kind!r} given)")
    _PLUGINS[kind][name] = factory


def _plugin(kind: str, name: str, **options):
    if name not in _PLUGINS[kind]:
        raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(_PLUGINS[kind])}")
    return _PLUGINS[kind][name](**options)


def _need(module: str, pip: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the {what} plug-in needs `{module}`: pip install {pip}") from exc


class EspeakTTS:
    """espeak-ng text to speech (offline); ``speed`` scales the words-per-minute rate."""

    voices = {"en": "en-us", "fr": "fr-fr", "pt": "pt-pt", "zh": "cmn"}

    def __init__(self, words_per_minute: int = 165, voice: str | None = None):
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("the espeak TTS needs espeak-ng: apt-get install espeak-ng (or brew install espeak-ng)")
        self.wpm = words_per_minute
        self.voice = voice

    def __call__(self, text: str, language: str, sample_rate: int, speed: float = 1.0) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            wav = os.path.join(tmp, "line.wav")
            voice = self.voice or self.voices.get(language, language)
            rate = str(int(min(450, self.wpm * speed)))
            proc = subprocess.run(["espeak-ng", "-v", voice, "-s", rate, "-w", wav, text], capture_output=True, text=True)
            if proc.returncode != 0 or not os.path.exists(wav):
                raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
            return load_audio(wav, sample_rate, channels=1)[0].numpy()


def _whisper(model: str = "base"):
    whisper = _need("whisper", "openai-whisper", "whisper ASR")
    asr = whisper.load_model(model)

    def transcribe(wave, sample_rate, language):
        if sample_rate != 16000:
            raise ValueError("whisper expects 16 kHz audio")
        result = asr.transcribe(wave.astype(np.float32), language=language)
        return [Cue(s["start"], s["end"], s["text"].strip()) for s in result["segments"]]

    return transcribe


def _argos():
    argos = _need("argostranslate.translate", "argostranslate", "argos MT")

    def translate(texts, source, target):
        return [argos.translate(t, source, target) for t in texts]

    return translate


def _marian(model: str | None = None):
    transformers = _need("transformers", "transformers sentencepiece", "MarianMT")

    def translate(texts, source, target):
        name = model or f"Helsinki-NLP/opus-mt-{source}-{target}"
        tok = transformers.MarianTokenizer.from_pretrained(name)
        net = transformers.MarianMTModel.from_pretrained(name)
        out = net.generate(**tok(texts, return_tensors="pt", padding=True))
        return tok.batch_decode(out, skip_special_tokens=True)

    return translate


def _demucs(model: str = "mdx_extra_q", repo=None, device: str = "cpu"):
    from avfast.data.separation import demucs_separator  # resampling, stereo and length handled there

    return demucs_separator(model, repo=repo, device=device)


register_plugin("tts", "espeak", EspeakTTS)
register_plugin("transcriber", "whisper", _whisper)
register_plugin("translator", "argos", _argos)
register_plugin("translator", "marian", _marian)
register_plugin("separator", "demucs", _demucs)


# ---- the pipeline -------------------------------------------------------------------------------

def _duck(wave: np.ndarray, cues: list[Cue], sample_rate: int, gain_db: float = -18.0, ramp: float = 0.05):
    """Lower ``wave`` by ``gain_db`` during each cue, with ``ramp``-second fades just outside it."""
    low = 10 ** (gain_db / 20)
    r = max(1, int(ramp * sample_rate))
    n = wave.shape[-1]
    gain = np.ones(n + 2 * r, np.float32)  # padded by r on both sides
    for c in cues:
        a, b = int(c.start * sample_rate) + r, int(c.end * sample_rate) + r
        shape = np.concatenate([np.linspace(1, low, r), np.full(max(b - a, 0), low), np.linspace(low, 1, r)])
        gain[a - r: a - r + len(shape)] = np.minimum(gain[a - r: a - r + len(shape)], shape[: len(gain) - (a - r)])
    return wave * gain[r: r + n]


class DubPipeline:
    """Synthesise a ``target`` language track for a video or audio file.

    Args:
        target: target language tag (``"es"``).
        tts: TTS plug-in name (``"espeak"``) or a callable ``(text, language, sample_rate, speed) -> (N,)``.
        translator: MT plug-in name or callable, used when no target subtitle file is given.
        transcriber: ASR plug-in name or callable, used when no source subtitle file is given.
        background: ``"duck"`` | ``"none"`` | ``"demucs"`` (or another separator) | a file path.
        sample_rate, max_speedup, speech_gain: output rate, fitting limit, level of the dub voice.
    """

    def __init__(self, target: str, *, tts="espeak", translator=None, transcriber=None, background: str = "duck",
                 sample_rate: int = 48000, max_speedup: float = 1.6, speech_gain: float = 0.8):
        self.target = target
        self.tts = _plugin("tts", tts) if isinstance(tts, str) else tts
        self.translator = _plugin("translator", translator) if isinstance(translator, str) else translator
        self.transcriber = _plugin("transcriber", transcriber) if isinstance(transcriber, str) else transcriber
        self.background = background
        self.sample_rate = sample_rate
        self.max_speedup = max_speedup
        self.speech_gain = speech_gain

    def _target_cues(self, original: np.ndarray, source_language: str, transcript, translation) -> list[Cue]:
        if translation is not None:
            return read_subtitles(translation) if isinstance(translation, (str, os.PathLike)) else list(translation)
        if transcript is None:
            if self.transcriber is None:
                raise ValueError("give a transcript (subtitle file) or a transcriber plug-in")
            mono16k = torch.from_numpy(original.mean(0, keepdims=True))
            mono16k = _resample(mono16k, self.sample_rate, 16000)
            transcript = self.transcriber(mono16k[0].numpy(), 16000, source_language)
        cues = read_subtitles(transcript) if isinstance(transcript, (str, os.PathLike)) else list(transcript)
        if self.translator is None:
            raise ValueError("give a target-language subtitle file or a translator plug-in (argos, marian)")
        texts = self.translator([c.text for c in cues], source_language, self.target)
        return [Cue(c.start, c.end, t) for c, t in zip(cues, texts)]

    def _background(self, original: np.ndarray, cues: list[Cue]) -> np.ndarray:
        if self.background == "duck":
            return _duck(original, cues, self.sample_rate)
        if self.background == "none":
            return np.zeros_like(original)
        if os.path.exists(self.background):
            bg = load_audio(self.background, self.sample_rate, channels=original.shape[0]).numpy()
            return np.pad(bg, ((0, 0), (0, max(0, original.shape[1] - bg.shape[1]))))[:, : original.shape[1]]
        return _plugin("separator", self.background)(original, self.sample_rate)

    def run(self, media, *, transcript=None, translation=None, source_language: str | None = None, track=None,
            channels: int | None = 1) -> tuple[torch.Tensor, dict]:
        """The dubbed track of ``media`` as float (C, N) and a report ``{"lines", "sped_up", "cut"}``.

        ``transcript``/``translation``: subtitle paths or lists of ``Cue``; ``track``: the source
        audio track (index or language) of ``media``.
        """
        original = load_audio(media, self.sample_rate, track=track, channels=channels).numpy()
        source_language = source_language or (track if isinstance(track, str) else "en")
        cues = self._target_cues(original, source_language, transcript, translation)
        speech = np.zeros(original.shape[1], np.float32)
        sped, cut = 0, 0
        for c in cues:
            a = int(c.start * self.sample_rate)
            slot = min(int(c.end * self.sample_rate), len(speech)) - a
            if slot <= 0:
                continue
            line = self.tts(c.text, self.target, self.sample_rate, 1.0)
            if len(line) > slot and isinstance(self.tts, EspeakTTS):  # say it faster before stretching
                line = self.tts(c.text, self.target, self.sample_rate, min(len(line) / slot, 2.0))
            line = line / (np.abs(line).max() + 1e-9) * self.speech_gain
            fitted, rate = fit_to_slot(line, slot, self.max_speedup)
            sped += rate > 1.0
            cut += len(line) / rate > slot + 1
            speech[a:a + slot] += fitted
        mix = self._background(original, cues) + speech[None, :]
        peak = float(np.abs(mix).max())
        if peak > 1.0:
            mix = mix / peak
        return torch.from_numpy(mix.astype(np.float32)), {"lines": len(cues), "sped_up": int(sped), "cut": int(cut)}


def _resample(wave: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    if src == dst:
        return wave
    n = int(round(wave.shape[-1] * dst / src))
    return torch.nn.functional.interpolate(wave[None], size=n, mode="linear", align_corners=False)[0]


def mux_track(video, track_path, out, language: str) -> Path:
    """Copy ``video``'s streams (no re-encoding) into ``out`` (mp4/mkv) and add ``track_path``'s
    audio as a new ``language``-tagged stream."""
    import av

    with av.open(os.fspath(video)) as src, av.open(os.fspath(track_path)) as extra, av.open(os.fspath(out), "w") as dst:
        mapping = {}
        for s in src.streams:
            if s.type in ("video", "audio"):
                mapping[s.index] = dst.add_stream_from_template(s)
                if s.metadata.get("language"):
                    mapping[s.index].metadata["language"] = s.metadata["language"]
        new = dst.add_stream_from_template(extra.streams.audio[0])
        new.metadata["language"] = iso639_2(language)
        for packet in src.demux():
            if packet.dts is None or packet.stream.index not in mapping:
                continue
            packet.stream = mapping[packet.stream.index]
            dst.mux(packet)
        for packet in extra.demux(extra.streams.audio[0]):
            if packet.dts is None:
                continue
            packet.stream = new
            dst.mux(packet)
    return Path(out)
