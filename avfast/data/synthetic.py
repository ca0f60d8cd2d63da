"""``make_demo_data``: a small, real, deterministic dataset in the avfast layout, in seconds.

Each "movie" is a run of shots (hard cuts, a new grey background each: only the shapes carry colour).
In a shot, shapes move and bounce; each shape hums a tone whose base pitch is set by its colour (one
note per palette colour), whose timbre is set by its kind (circle: pure, square: odd harmonics), whose
pitch then follows its height on screen within +-6 % (each colour keeps its own band) and whose
loudness follows its size, and it clicks when it hits a wall, so the sound follows the picture. A
"speaker" (a face whose mouth opens with the primary-language speech envelope) says one line per shot;
every language track has the same background sounds and its own line (espeak-ng speech when
installed, a synthetic voice otherwise) in the same slot: a dubbed movie in miniature.

Layout written under ``out_dir``::

    manifest.jsonl                  one shot per line (see avfast.data.manifest)
    movies/m000.mp4                 H.264 video + one FLAC track per language (language-tagged)
    movies/m000.<lang>.flac         each language track (the manifest points here)
    movies/m000.sep.flac            the background without speech (the "no-speech" variant)

Labels per shot (for probes): ``shapes`` (sorted kinds), ``kind`` and ``colour`` of the largest
shape (its colour is its note). A held-out set is the same recipe with another ``seed``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avfast.data.audio import iso639_2, save_audio
from avfast.data.manifest import Clip, write_manifest

__all__ = ["make_demo_data", "synthetic_voice", "espeak_available"]

_PHRASES = {
    "en": ["the red ball bounces off the wall", "look at the square moving fast", "here comes the little circle"],
    "es": ["la pelota roja rebota en la pared", "mira el cuadrado que se mueve", "aqui viene el circulo pequeño"],
    "fr": ["la balle rouge rebondit sur le mur", "regarde le carré qui bouge vite", "voici le petit cercle"],
    "ja": ["あかいボールがかべにあたる", "しかくがはやくうごいている", "ちいさなまるがきました"],
    "de": ["der rote ball prallt von der wand ab", "sieh das schnelle quadrat", "hier kommt der kleine kreis"],
    "it": ["la palla rossa rimbalza sul muro", "guarda il quadrato veloce", "ecco il piccolo cerchio"],
}
# per language: fundamental frequency (Hz) and syllables per second of the synthetic voice
_VOICE_STYLE = {"en": (120.0, 4.5), "es": (150.0, 6.0), "fr": (135.0, 5.2), "ja": (190.0, 7.0),
                "de": (110.0, 4.2), "it": (160.0, 5.6)}
# shape colours (RGB) and the note (Hz) each one hums: what is seen fixes what is heard
_PALETTE = np.array([[230, 40, 40], [40, 190, 60], [50, 90, 235], [245, 215, 40], [200, 60, 220], [40, 210, 220],
                     [245, 140, 30], [250, 250, 250]], np.uint8)
_NOTES = np.array([220.0, 277.2, 349.2, 440.0, 554.4, 698.5, 880.0, 1108.7])
_COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
_VOWEL_FORMANTS = np.array([[730, 1090], [270, 2290], [300, 870], [530, 1840], [570, 840]], np.float64)


def espeak_available() -> bool:
    """True when the ``espeak-ng`` program is on PATH."""
    return shutil.which("espeak-ng") is not None


def synthetic_voice(seconds: float, sample_rate: int, language: str, rng: np.random.Generator) -> np.ndarray:
    """A speech-like float32 (N,) signal: voiced syllables with formants, pitch per language."""
    f0, rate = _VOICE_STYLE.get(language, (140.0, 5.0))
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(sample_rate * rng.uniform(0.6, 1.4) / rate)
        seg = slice(pos, min(pos + length, n))
        ts = t[seg]
        pitch = f0 * (1.0 + 0.15 * rng.uniform(-1, 1)) * (1.0 - 0.1 * (ts - ts[0]))
        phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
        f1, f2 = _VOWEL_FORMANTS[rng.integers(len(_VOWEL_FORMANTS))]
        syl = np.zeros(len(ts))
        for h in range(1, 16):
            freq = h * pitch.mean()
            gain = np.exp(-((freq - f1) / 180.0) ** 2) + 0.6 * np.exp(-((freq - f2) / 250.0) ** 2) + 0.05 / h
            syl += gain * np.sin(h * phase)
        out[seg] = syl * np.hanning(len(ts))
        pos += length + int(sample_rate * rng.uniform(0.02, 0.12))  # short pause between syllables
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def _espeak(text: str, language: str, sample_rate: int) -> np.ndarray:
    """espeak-ng speech (the dubbing pipeline's TTS at 165 words per minute), peak 0.5: float32 (N,)."""
    from avfast.data.dubbing import EspeakTTS

    wave = EspeakTTS(words_per_minute=165)(text, language, sample_rate)
    return (0.5 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


@dataclass
class _Shape:
    kind: str  # "circle" | "square"
    color: np.ndarray  # a _PALETTE row
    radius: float
    pos: np.ndarray  # (x, y) pixels
    vel: np.ndarray  # pixels per second
    tone: float  # Hz at mid-height: the colour's note
    colour: str = ""  # the palette colour's name (a probe label)


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to n samples, with short fades so cuts do not click."""
    wave = wave[:n].copy()
    fade = min(len(wave) // 4, 480)
    if fade:
        ramp = np.linspace(0, 1, fade, dtype=np.float32)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return np.pad(wave, (0, n - len(wave)))


class _ShotRenderer:
    """Frames and background audio of one shot, both driven by the same shape trajectories."""

    def __init__(self, rng, width, height, fps, sample_rate, frames):
        self.w, self.h, self.fps, self.sr, self.n = width, height, fps, sample_rate, frames
        # a grey background: only the shapes carry colour (a coloured one would tell shots apart by itself)
        self.bg = np.full(3, rng.integers(40, 200), np.uint8)
        colors = rng.choice(len(_PALETTE), size=int(rng.integers(1, 3)), replace=False)
        self.shapes = [
            _Shape(kind=str(rng.choice(["circle", "square"])), color=_PALETTE[c],
                   radius=float(rng.uniform(0.10, 0.20) * height),
                   pos=rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height]),
                   vel=rng.uniform(-1, 1, 2) * np.array([width, height]) * 0.5,
                   tone=float(_NOTES[c]), colour=_COLOUR_NAMES[c])
            for c in colors
        ]
        self.track, self.bounces = self._simulate()
        self.yy, self.xx = np.mgrid[0:height, 0:width]

    def _simulate(self):
        """Per-frame positions (frames, shapes, 2) with wall bounces; bounce times per shape."""
        track = np.zeros((self.n, len(self.shapes), 2))
        bounces: list[list[float]] = [[] for _ in self.shapes]
        lo = np.zeros(2)
        for i, s in enumerate(self.shapes):
            pos, vel = s.pos.copy(), s.vel.copy()
            hi = np.array([self.w, self.h], np.float64)
            for f in range(self.n):
                track[f, i] = pos
                pos = pos + vel / self.fps
                for ax in range(2):
                    if pos[ax] - s.radius < lo[ax] or pos[ax] + s.radius > hi[ax]:
                        vel[ax] = -vel[ax]
                        pos[ax] = np.clip(pos[ax], lo[ax] + s.radius, hi[ax] - s.radius)
                        bounces[i].append((f + 1) / self.fps)
        return track, bounces

    def frame(self, f: int, mouth: float) -> np.ndarray:
        img = np.empty((self.h, self.w, 3), np.uint8)
        img[:] = self.bg
        for i, s in enumerate(self.shapes):
            x, y = self.track[f, i]
            if s.kind == "circle":
                mask = (self.xx - x) ** 2 + (self.yy - y) ** 2 <= s.radius ** 2
            else:
                mask = (np.abs(self.xx - x) <= s.radius) & (np.abs(self.yy - y) <= s.radius)
            img[mask] = s.color
        # the speaker: a face in the top-left corner whose mouth opens with the speech envelope
        r = self.h // 8
        cx, cy = r + 4, r + 4
        img[(self.xx - cx) ** 2 + (self.yy - cy) ** 2 <= r * r] = (240, 200, 160)
        mh = max(1, int(mouth * r * 0.8))
        img[cy + r // 3 - mh // 2: cy + r // 3 + mh // 2 + 1, cx - r // 2: cx + r // 2] = (90, 20, 20)
        return img

    def background(self) -> np.ndarray:
        """Each shape's note (colour), timbre (kind), pitch bend (height), loudness (size); clicks at
        bounces: float32 (N,)."""
        n = int(round(self.n / self.fps * self.sr))
        t = np.arange(n) / self.sr
        frame_t = np.arange(self.n) / self.fps
        out = np.zeros(n)
        for i, s in enumerate(self.shapes):
            height = 1.0 - np.interp(t, frame_t, self.track[:, i, 1]) / self.h  # 0 bottom .. 1 top
            freq = s.tone * (0.94 + 0.12 * height)  # +-6 %: each colour keeps its own band
            phase = 2 * np.pi * np.cumsum(freq) / self.sr
            harmonics = (1,) if s.kind == "circle" else (1, 3, 5)  # a square buzzes (odd harmonics)
            out += (0.15 + s.radius / self.h) * sum(np.sin(h * phase) / h for h in harmonics)
            for b in self.bounces[i]:
                k = int(b * self.sr)
                m = min(n - k, int(0.03 * self.sr))
                if m > 0:
                    out[k:k + m] += 0.3 * np.exp(-np.arange(m) / (0.004 * self.sr)) * np.sin(
                        2 * np.pi * 1800 * np.arange(m) / self.sr)
        return (0.6 * out / max(1.0, np.abs(out).max())).astype(np.float32)


def _labels(shapes: list[_Shape]) -> dict:
    """Probe labels of a shot: every shape's kind, and the kind and colour (= note) of the largest."""
    big = max(shapes, key=lambda sh: sh.radius)
    return {"shapes": sorted(sh.kind for sh in shapes), "kind": big.kind, "colour": big.colour}


def _envelope(wave: np.ndarray, sample_rate: int, fps: float, frames: int) -> np.ndarray:
    """Per-frame RMS of ``wave`` scaled to [0, 1] (drives the speaker's mouth)."""
    hop = sample_rate / fps
    rms = np.array([np.sqrt(np.mean(wave[int(f * hop): int((f + 1) * hop)] ** 2) + 1e-12) for f in range(frames)])
    return np.clip(rms / (rms.max() + 1e-9), 0, 1)


def _write_movie(path: Path, frames: np.ndarray, tracks: dict[str, np.ndarray], fps: int, sample_rate: int,
                 embed_audio: bool) -> None:
    """H.264 (key frame every second and at cuts) + one language-tagged FLAC stream per track."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "20", "g": str(fps)})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = {}
        if embed_audio:
            for lang in tracks:
                s = out.add_stream("flac", rate=sample_rate, layout="mono")
                s.metadata["language"] = iso639_2(lang)
                audio[lang] = s
        chunk = 4096
        a_pos = 0
        n_samples = len(next(iter(tracks.values())))
        for f, img in enumerate(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
            # interleave: audio up to this frame's time
            target = min(n_samples, int((f + 1) / fps * sample_rate))
            while audio and a_pos + chunk <= target:
                _encode_audio(out, audio, tracks, a_pos, a_pos + chunk, sample_rate)
                a_pos += chunk
        if audio and a_pos < n_samples:
            _encode_audio(out, audio, tracks, a_pos, n_samples, sample_rate)
        for s in [video, *audio.values()]:
            for packet in s.encode(None):
                out.mux(packet)


def _encode_audio(out, streams, tracks, lo, hi, sample_rate):
    import av

    for lang, stream in streams.items():
        pcm = (np.clip(tracks[lang][None, lo:hi], -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = lo
        for packet in stream.encode(frame):
            out.mux(packet)


def make_demo_data(out_dir, *, num_movies: int = 12, shots_per_movie: int = 4, shot_seconds=(3.2, 5.0),
                   width: int = 192, height: int = 144, fps: int = 25, sample_rate: int = 48000,
                   languages=("en", "es", "fr", "ja"), min_languages: int = 2, voice: str = "auto",
                   embed_audio: bool = True, seed: int = 0, progress: bool = False) -> Path:
    """Write a demo dataset under ``out_dir`` and return the manifest's path.

    Args:
        num_movies, shots_per_movie, shot_seconds: size of the dataset; shot lengths are drawn in
            ``shot_seconds`` (keep them inside 3-12 s for the paper's shot filter).
        width, height, fps, sample_rate: video and audio format (defaults keep generation to seconds).
        languages: track languages; the first is every movie's primary (original) language, each
            movie has between ``min_languages`` and ``len(languages)`` tracks.
        voice: ``"espeak"`` (espeak-ng, error when missing), ``"synthetic"``, or ``"auto"``
            (espeak-ng when installed).
        embed_audio: also store the language tracks inside the mp4 (language-tagged FLAC).
        seed: everything is a function of the seed (espeak-ng output is deterministic too).
    """
    if voice not in ("auto", "espeak", "synthetic"):
        raise ValueError(f"voice must be 'auto', 'espeak' or 'synthetic' ({voice!r} given)")
    if voice == "espeak" and not espeak_available():
        raise RuntimeError("voice='espeak' but espeak-ng is not installed (apt-get install espeak-ng)")
    if not 1 <= min_languages <= len(languages):
        raise ValueError(f"min_languages must be in [1, {len(languages)}] ({min_languages} given)")
    use_espeak = voice == "espeak" or (voice == "auto" and espeak_available())
    out_dir = Path(out_dir)
    (out_dir / "movies").mkdir(parents=True, exist_ok=True)
    clips: list[Clip] = []
    speech_cache: dict[tuple[str, int], np.ndarray] = {}
    from avfast.train.progress import track

    for m in track(range(num_movies), desc="make-demo-data", unit="movie", enabled=progress):
        rng = np.random.default_rng([seed, m])
        langs = list(languages[: int(rng.integers(min_languages, len(languages) + 1))])
        name = f"m{m:03d}"
        frames, tracks, bg_all, t0 = [], {lang: [] for lang in langs}, [], 0.0
        for s in range(shots_per_movie):
            n = int(round(rng.uniform(*shot_seconds) * fps))
            shot = _ShotRenderer(rng, width, height, fps, sample_rate, n)
            bg = shot.background()
            slot = slice(int(0.4 * sample_rate), len(bg) - int(0.3 * sample_rate))
            speech = {}
            for lang in langs:
                k = int(rng.integers(len(_PHRASES.get(lang, _PHRASES["en"]))))
                if use_espeak:
                    key = (lang, k)
                    if key not in speech_cache:
                        speech_cache[key] = _espeak(_PHRASES.get(lang, _PHRASES["en"])[k], lang, sample_rate)
                    line = speech_cache[key]
                else:
                    line = synthetic_voice(2.5, sample_rate, lang, np.random.default_rng([seed, m, s, k, list(languages).index(lang)]))
                full = np.zeros_like(bg)
                full[slot] = _fit(line, slot.stop - slot.start)
                speech[lang] = full
            mouth = _envelope(speech[langs[0]], sample_rate, fps, n)
            frames += [shot.frame(f, mouth[f]) for f in range(n)]
            for lang in langs:
                tracks[lang].append(np.clip(bg + speech[lang], -1, 1))
            bg_all.append(bg)
            end = t0 + n / fps
            clips.append(Clip(video=f"movies/{name}.mp4",
                              audio={lang: f"movies/{name}.{lang}.flac" for lang in langs},
                              source=name, start=round(t0, 6), end=round(end, 6), primary=langs[0],
                              separated=f"movies/{name}.sep.flac",
                              labels=_labels(shot.shapes)))
            t0 = end
        waves = {lang: np.concatenate(v) for lang, v in tracks.items()}
        for lang, wave in waves.items():
            save_audio(out_dir / "movies" / f"{name}.{lang}.flac", wave, sample_rate)
        save_audio(out_dir / "movies" / f"{name}.sep.flac", np.concatenate(bg_all), sample_rate)
        _write_movie(out_dir / "movies" / f"{name}.mp4", np.stack(frames), waves, fps, sample_rate, embed_audio)
    manifest = out_dir / "manifest.jsonl"
    write_manifest(manifest, clips)
    return manifest
