"""VGGSound-style labelled clips (seed 004) and a synthetic generator of event-typed sounds.

Layout assumed (VGGSound's public csv, with the multi-label reading of the seed's Multi-labeled
VGGSound, and VGG-SS boxes):

    root/
      vggsound.csv           # no header: youtube_id,start_seconds,label,split (train | test)
                             # one row per (clip, label): repeated (youtube_id, start) rows = several labels;
                             # a label field may also hold several labels separated by ";"
      video/<youtube_id>_<start:06d>.mp4   # 10 s clip from `start` (audio inside, or in audio/)
      audio/<youtube_id>_<start:06d>.wav   # optional: used when present (e.g. extracted audio)
      vggss.json             # optional: [{"file": "<youtube_id>_<start:06d>", "bbox": [[x1, y1, x2, y2], ...]}]
                             # boxes normalised to [0, 1] (VGG-SS)

The class list is the sorted set of labels in the csv (VGGSound: 309). ``VGGSoundDataset`` returns
``wave (S,)``, ``frames (3, T, H, W)`` uint8, ``labels (C,)`` multi-hot, ``clip`` and, with
``vggss.json``, the ``boxes``. A clip without audio raises ``DataError`` naming the clip.

``SyntheticEvents``: clips whose classes come in three event types, each tied to a visible object
(a coloured square with the class's colour, its box is the localisation ground truth) and a tone of
the class's frequency: ``onset`` classes beat periodically (tone bursts with sharp attacks, the
object blinks with them), ``instant`` classes sound once (a loud short burst, the object shows only
then), ``continuous`` classes hum through the clip (faded in, quiet, the object always shown, faint).
Every clip also holds noise and a few broadband distractor clicks (onsets that are not the class's).
"""
from __future__ import annotations

import csv
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from avfast.data.errors import DataError

__all__ = ["VGGSoundDataset", "read_vggsound_csv", "SyntheticEvents", "write_synthetic_vggsound", "collate_events",
           "EVENT_TYPES"]

EVENT_TYPES = ("onset", "instant", "continuous")


def clip_id(youtube_id: str, start: float) -> str:
    return f"{youtube_id}_{int(round(float(start))):06d}"


def read_vggsound_csv(path) -> tuple[list[dict], list[str]]:
    """Rows of a VGGSound csv -> (clips in file order [{"clip", "youtube_id", "start", "labels", "split"}],
    sorted class names). Repeated clips merge their labels; a clip listed in two splits is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "VGGSound csv not found")
    clips: "OrderedDict[str, dict]" = OrderedDict()
    with open(path, newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 4:
                raise DataError(path, f"line {n}: expected youtube_id,start_seconds,label,split, got {row}")
            yid, start, label, split = (x.strip() for x in row)
            try:
                start_s = float(start)
            except ValueError:
                raise DataError(path, f"line {n}: start_seconds {start!r} is not a number") from None
            cid = clip_id(yid, start_s)
            entry = clips.setdefault(cid, {"clip": cid, "youtube_id": yid, "start": start_s, "labels": [],
                                           "split": split})
            if entry["split"] != split:
                raise DataError(path, f"line {n}: clip {cid} is in splits {entry['split']!r} and {split!r}")
            for lab in label.split(";"):
                lab = lab.strip()
                if lab and lab not in entry["labels"]:
                    entry["labels"].append(lab)
    names = sorted({lab for c in clips.values() for lab in c["labels"]})
    return list(clips.values()), names


class VGGSoundDataset(torch.utils.data.Dataset):
    """One split of a VGGSound-style root (layout in the module docstring).

    Items: ``wave (seconds * sample_rate,)`` float32 mono, ``frames (3, fps * seconds, size, size)``
    uint8, ``labels (C,)`` float multi-hot, ``clip`` (str), ``boxes`` (list, [] without vggss.json)."""

    def __init__(self, root, split: str = "train", *, seconds: float = 10.0, sample_rate: int = 16000,
                 fps: float = 10.0, size: int = 112, classes: list[str] | None = None):
        self.root = Path(root)
        rows, names = read_vggsound_csv(self.root / "vggsound.csv")
        self.classes = list(classes) if classes is not None else names
        index = {n: i for i, n in enumerate(self.classes)}
        self.clips = [r for r in rows if r["split"] == split]
        if not self.clips:
            raise DataError(self.root / "vggsound.csv", f"no clips in split {split!r}")
        for r in self.clips:
            unknown = [lab for lab in r["labels"] if lab not in index]
            if unknown:
                raise DataError(self.root / "vggsound.csv", f"clip {r['clip']}: labels {unknown} not in the class list")
        self.index = index
        self.seconds, self.sample_rate, self.fps, self.size = seconds, sample_rate, fps, size
        boxes_file = self.root / "vggss.json"
        self.boxes = {}
        if boxes_file.is_file():
            self.boxes = {e["file"]: e["bbox"] for e in json.loads(boxes_file.read_text())}

    def __len__(self) -> int:
        return len(self.clips)

    def _audio(self, clip: str, video: Path) -> torch.Tensor:
        from avfast.data.audio import audio_tracks, load_audio

        wav = self.root / "audio" / f"{clip}.wav"
        source = wav if wav.is_file() else video
        if source is video and (not video.is_file() or not audio_tracks(video)):
            raise DataError(video, f"clip {clip} has no audio (no audio stream and no audio/{clip}.wav)")
        return load_audio(source, self.sample_rate, 0.0, self.seconds, channels=1)[0]

    def __getitem__(self, i: int) -> dict:
        from avfast.data.video import PyAVVideoReader

        r = self.clips[i]
        clip = r["clip"]
        video = self.root / "video" / f"{clip}.mp4"
        if not video.is_file():
            raise DataError(video, f"clip {clip}: video file missing")
        wave = self._audio(clip, video)
        frames = PyAVVideoReader(size=(self.size, self.size)).read(
            video, 0.0, self.seconds, num_frames=int(round(self.fps * self.seconds)), fps=self.fps)
        labels = torch.zeros(len(self.classes))
        labels[[self.index[lab] for lab in r["labels"]]] = 1.0
        return {"wave": wave, "frames": frames.permute(1, 0, 2, 3).contiguous(), "labels": labels, "clip": clip,
                "boxes": self.boxes.get(clip, [])}


def collate_events(items: list[dict]) -> dict:
    """Stack a list of dataset items; ``clip`` and ``boxes`` stay lists."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("wave", "frames", "labels")}
    out["clip"] = [it["clip"] for it in items]
    out["boxes"] = [it.get("boxes", []) for it in items]
    return out


# ----------------------------------------------------------------------------------- synthetic


class SyntheticEvents:
    """Event-typed synthetic clips (see the module docstring); ``classes_per_type`` classes per type.

    ``tensors(n, seed)`` -> dict of ``wave (n, S)`` float32, ``frames (n, 3, T, H, W)`` uint8,
    ``labels (n, C)``, ``boxes (n, 4)`` (normalised box of the clip's first event's object),
    ``loc_step (n,)`` (a 10 Hz step when that object is shown and heard), ``types (n, C)``."""

    FREQS = (350.0, 620.0, 1000.0, 1500.0, 2300.0, 3400.0, 4600.0, 5600.0, 7000.0)
    COLOURS = ((230, 40, 40), (40, 200, 40), (50, 80, 240), (230, 220, 40), (220, 40, 220), (40, 220, 220),
               (240, 140, 30), (140, 60, 200), (250, 250, 250))

    def __init__(self, *, classes_per_type: int = 2, seconds: int = 3, fps: int = 10, size: int = 64,
                 sample_rate: int = 16000, max_events: int = 2, decoys: int = 2, seed: int = 0):
        self.classes = 3 * classes_per_type
        if self.classes > len(self.FREQS):
            raise ValueError(f"at most {len(self.FREQS) // 3} classes per type ({classes_per_type} given)")
        if not 1 <= max_events <= 3:
            raise ValueError(f"max_events must be 1..3 ({max_events} given)")
        self.types = [EVENT_TYPES[c // classes_per_type] for c in range(self.classes)]
        self.class_names = [f"{t}_{c % classes_per_type}" for c, t in enumerate(self.types)]
        self.seconds, self.fps, self.size, self.sr = seconds, fps, size, sample_rate
        self.max_events, self.decoys, self.seed = max_events, decoys, seed

    def _burst(self, f: float, dur: float, rng, soft: bool = False) -> np.ndarray:
        """A tone burst: sharp attack + exponential decay, or (``soft``) a Hann swell without an onset."""
        t = np.arange(int(dur * self.sr)) / self.sr
        tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
        return tone * (np.hanning(t.size) if soft else np.exp(-t / (dur / 3)) * np.minimum(1, t * 2000))

    def _event(self, c: int, wave, rng, decoy: bool) -> tuple[np.ndarray, float]:
        """Add class ``c``'s sound (or its decoy) to ``wave``; -> (frames where its object shows, opacity)."""
        n, T = wave.size, self.seconds * self.fps
        kind, f = self.types[c], self.FREQS[c]
        shown = np.zeros(T, bool)

        def put(t0, b):
            i = int(t0 * self.sr)
            wave[i:i + b.size] += b[: n - i]
            shown[min(int(t0 * self.fps), T - 1)] = True

        if kind == "onset":                  # periodic beats with sharp attacks, the object blinking with them
            if decoy:                        # decoy: the class's tone as a steady hum (no transient to pool)
                kind = "continuous"
            else:
                period = 0.25 + 0.1 * (c % 2)
                for t0 in np.arange(rng.uniform(0.05, period), self.seconds - 0.15, period):
                    if rng.random() < 0.2:   # a ghost beat: its onset without the class's tone or object
                        i = int(t0 * self.sr)
                        wave[i:i + 40] += 0.4 * rng.choice([-1, 1], 40)
                        continue
                    put(t0, rng.uniform(0.2, 0.4) * self._burst(f, 0.06, rng))
                return shown, 0.8
        if kind == "instant":                # one loud burst; decoy: a few quiet blips at random times
            if decoy:
                for t0 in rng.uniform(0.1, self.seconds - 0.2, rng.integers(3, 6)):
                    put(t0, rng.uniform(0.08, 0.15) * self._burst(f, 0.06, rng))
                return shown, 0.6
            t0 = rng.uniform(0.2, self.seconds - 0.4)
            put(t0, 0.9 * self._burst(f, 0.2, rng))
            shown[int(t0 * self.fps): int(t0 * self.fps) + 2] = True
            return shown, 1.0
        # continuous: a steady hum through the clip; its decoy: the same hum for a short stretch
        lo, hi = 0.0, float(self.seconds)
        if decoy and self.types[c] == "continuous":
            lo = rng.uniform(0.1, self.seconds - 0.9)
            hi = lo + rng.uniform(0.4, 0.8)
        t = np.arange(n) / self.sr
        ramp = np.clip((t - lo) / 0.05, 0, 1) * np.clip((hi - t) / 0.05, 0, 1)
        wave += 0.05 * np.sin(2 * np.pi * f * t) * ramp
        shown[int(lo * self.fps): int(np.ceil(hi * self.fps))] = True
        return shown, 0.45

    def clip(self, rng: np.random.Generator) -> dict:
        n, T, S = self.seconds * self.sr, self.seconds * self.fps, self.size
        wave = rng.normal(0, 0.01, n)
        frames = rng.integers(0, 50, (T, S, S, 3)).astype(np.float32)
        for t0 in rng.uniform(0.1, self.seconds - 0.1, rng.integers(2, 5)):   # distractor clicks
            i = int(t0 * self.sr)
            wave[i:i + 40] += rng.uniform(0.3, 0.6) * rng.choice([-1, 1], 40)
        k = int(rng.integers(1, self.max_events + 1))
        chosen = rng.choice(self.classes, size=k, replace=False)
        others = np.setdiff1d(np.arange(self.classes), chosen)
        decoys = rng.choice(others, size=min(int(rng.integers(0, self.decoys + 1)), others.size), replace=False)
        labels = np.zeros(self.classes, np.float32)
        labels[chosen] = 1
        side = S // 3
        box = loc_step = None
        for j, c in enumerate([*chosen, *decoys]):
            shown, alpha = self._event(int(c), wave, rng, decoy=j >= k)
            x, y = rng.integers(0, S - side, 2)
            if box is None:
                box = [x / S, y / S, (x + side) / S, (y + side) / S]
                loc_step = int(np.flatnonzero(shown)[len(np.flatnonzero(shown)) // 2])
            elif j >= k:
                shown[loc_step] = False          # a decoy's object never shows at the localised step
            colour = np.array(self.COLOURS[c], np.float32)
            for fr in np.flatnonzero(shown):
                patch = frames[fr, y:y + side, x:x + side]
                frames[fr, y:y + side, x:x + side] = (1 - alpha) * patch + alpha * colour
        return {"wave": np.clip(wave, -1, 1).astype(np.float32), "frames": frames.clip(0, 255).astype(np.uint8),
                "labels": labels, "box": np.array(box, np.float32), "loc_step": loc_step}

    def tensors(self, n: int, seed: int | None = None) -> dict:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        clips = [self.clip(rng) for _ in range(n)]
        return {
            "wave": torch.from_numpy(np.stack([c["wave"] for c in clips])),
            "frames": torch.from_numpy(np.stack([c["frames"] for c in clips])).permute(0, 4, 1, 2, 3).contiguous(),
            "labels": torch.from_numpy(np.stack([c["labels"] for c in clips])),
            "boxes": torch.from_numpy(np.stack([c["box"] for c in clips])),
            "loc_step": torch.tensor([c["loc_step"] for c in clips]),
        }


def write_synthetic_vggsound(root, *, clips: dict[str, int] | None = None, seconds: int = 1, size: int = 32,
                             seed: int = 0, no_audio: tuple[str, ...] = ()) -> Path:
    """Write a small VGGSound-layout root of synthetic clips (mp4 with FLAC audio, csv, vggss.json).

    ``no_audio``: clip ids written without an audio stream (to exercise the error)."""
    from avfast.data.synthetic import _write_movie

    root = Path(root)
    (root / "video").mkdir(parents=True, exist_ok=True)
    gen = SyntheticEvents(seconds=seconds, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    rows, boxes = [], []
    n = 0
    for split, count in (clips or {"train": 4, "test": 2}).items():
        for _ in range(count):
            c = gen.clip(rng)
            yid = f"syn{n:04d}x"
            cid = clip_id(yid, 0)
            _write_movie(root / "video" / f"{cid}.mp4", c["frames"], {"und": c["wave"]}, gen.fps, gen.sr,
                         embed_audio=cid not in no_audio)
            for lab in np.flatnonzero(c["labels"]):
                rows.append([yid, "0", gen.class_names[lab], split])
            boxes.append({"file": cid, "bbox": [c["box"].round(4).tolist()]})
            n += 1
    with open(root / "vggsound.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    (root / "vggss.json").write_text(json.dumps(boxes, indent=1))
    return root
