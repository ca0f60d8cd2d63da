"""AVSBench (S4, MS3, AVSS) in its released layout, the robustness settings, and a synthetic twin.

Layout (AVSBench-semantic release, which holds all three tasks)::

    root/metadata.csv                   columns: uid, split (train|val|test), label (v1s|v1m|v2), ...
    root/label2idx.json                 (optional) class name -> index, 71 classes, background 0
    root/<label>/<uid>/frames/<i>.jpg   i = 0 .. T-1 (T = 5 for v1s / v1m, 10 for v2)
    root/<label>/<uid>/audio.wav        T seconds; frame i hears [i, i + 1) s
    root/<label>/<uid>/labels_rgb/<i>.png   colour masks (AVSBench's 71-colour map, black = background)
    root/<label>/<uid>/vggish.npy       (optional, ``audio="features"``) (T, 128) float features

The AVSBench-object release (S4 and MS3 only) is read too (``layout="object"``; ``"auto"`` picks
by the csv found): ``root/s4_meta_data.csv`` (name, ..., category, split) with
``s4_data/visual_frames/<split>/<category>/<name>/<name>_<i+1>.png``, ``s4_data/gt_masks/...`` (same
pattern) and ``s4_data/audio_wav/<split>/<category>/<name>.wav``; ``root/ms3_meta_data.csv`` (name,
..., split) with ``ms3_data/visual_frames/<name>/<name>.mp4_<i+1>.png``,
``ms3_data/gt_masks/<split>/<name>/<name>_<i+1>.png`` and ``ms3_data/audio_wav/<split>/<name>.wav``
(``root`` may also be the folder holding ``Single-source/`` and ``Multi-sources/``). Audio features
there: ``<the wav path>.vggish.npy`` (our convention; the release's log-mel pickles are not read).

Tasks: ``s4`` reads v1s (binary masks: any colour = object), ``ms3`` v1m (binary), ``avss`` v2
(``subsets=("v1s", "v1m", "v2")`` adds the 5-frame clips, zero-padded to 10 frames with ``valid`` False)
(class labels from the colour map). S4's training split labels only the first frame (AVSBench): its
other masks are optional and ``valid`` says which frames have one; every other required mask that is
missing raises ``DataError`` naming the file, as does a mask whose size differs from its frame's.
Frames and masks are resized to ``size`` (224 x 224, AVSBench's evaluation size; masks nearest).

Robustness (the seed's note 5): ``snr_db`` adds white Gaussian noise at that signal-to-noise ratio to
the audio (one level per dataset; the command evaluates a list); ``frame_mix=0.25`` picks that
fraction of the clips (deterministic for ``seed``) and swaps a random subset of their frames with
frames of other clips; our reading: the swapped-in frames' objects are silent, so their masks are empty.
"""
from __future__ import annotations

import csv
import json
import math
import os
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avfast.data.errors import DataError

__all__ = ["AVSBENCH_TASKS", "AVSS_NUM_CLASSES", "avss_palette", "colour_to_labels", "labels_to_colour",
           "read_image", "write_image", "AVSBenchClip", "clip_paths", "find_clips", "AVSBenchDataset",
           "add_noise_at_snr",
           "SyntheticAVS", "write_synthetic_avsbench", "collate_avs"]

AVSS_NUM_CLASSES = 71
# task -> (subset directory, frames per clip)
AVSBENCH_TASKS = {"s4": ("v1s", 5), "ms3": ("v1m", 5), "avss": ("v2", 10)}
SUBSET_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
SPLITS = ("train", "val", "test")
SAMPLE_RATE = 16000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Colour map -----------------------------------------------------------------------------------------


def avss_palette(num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """AVSBench's colour map (the PASCAL VOC bit-interleaved palette): (num_classes, 3) uint8.

    Class c's bits 0, 1, 2 go to the top bits of R, G, B, then bits 3, 4, 5 to the next, and so on;
    class 0 (background) is black.
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        lab, shift = c, 7
        while lab:
            for ch in range(3):
                palette[c, ch] |= ((lab >> ch) & 1) << shift
            lab >>= 3
            shift -= 1
    return palette


def colour_to_labels(rgb: np.ndarray, path="<mask>", num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """(H, W, 3) uint8 colour mask -> (H, W) int64 labels; a colour outside the map raises DataError."""
    palette = avss_palette(num_classes).astype(np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], codes), 0, len(keys) - 1)
    found = keys[order][pos] == codes
    if not found.all():
        bad = rgb[~found][0]
        raise DataError(path, f"colour {tuple(int(x) for x in bad)} is not in AVSBench's {num_classes}-class "
                              "colour map")
    return order[pos]


def labels_to_colour(labels: np.ndarray, num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colour mask."""
    return avss_palette(num_classes)[np.asarray(labels)]


# Images through PyAV (PNG and JPEG; no extra dependency) --------------------------------------------


def read_image(path, *, gray: bool = False) -> np.ndarray:
    """Decode a PNG or JPEG file: (H, W, 3) uint8 RGB, or (H, W) with ``gray``. DataError names the file."""
    from avfast.data.errors import decoding, open_media

    with open_media(path, "image") as container, decoding(path, "image decoding"):
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="gray" if gray else "rgb24")


def write_image(path, array: np.ndarray) -> str:
    """Write (H, W, 3) RGB or (H, W) gray uint8 as PNG, or as JPEG when ``path`` ends in .jpg/.jpeg."""
    import av

    array = np.ascontiguousarray(array, dtype=np.uint8)
    fmt = "rgb24" if array.ndim == 3 else "gray"
    jpeg = str(path).lower().endswith((".jpg", ".jpeg"))
    codec = av.CodecContext.create("mjpeg" if jpeg else "png", "w")
    codec.width, codec.height = array.shape[1], array.shape[0]
    codec.pix_fmt = "yuvj444p" if jpeg else fmt
    if jpeg:
        codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(array, format=fmt)
    if jpeg:
        frame = frame.reformat(format="yuvj444p")
    data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return os.fspath(path)


# Audio robustness -----------------------------------------------------------------------------------


def add_noise_at_snr(wave: torch.Tensor, snr_db: float, *, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``wave + s * noise`` with s such that ``10 log10(P_wave / P_noise) = snr_db`` (power over the last dim).

    wave (..., N); noise (..., N) or None for white Gaussian noise. A silent wave stays silent.
    """
    if noise is None:
        noise = torch.randn(wave.shape, generator=generator, dtype=wave.dtype)
    p_signal = wave.pow(2).mean(-1, keepdim=True)
    p_noise = noise.pow(2).mean(-1, keepdim=True).clamp_min(1e-12)
    scale = torch.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return wave + scale * noise


# Dataset ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AVSBenchClip:
    """One clip's files: ``frames`` and ``masks`` (T paths each), ``audio`` (wav), ``features`` (npy)."""

    uid: str
    split: str
    frames: tuple
    masks: tuple
    audio: Path
    features: Path


OBJECT_LAYOUT = {"s4": ("s4_meta_data.csv", "Single-source"), "ms3": ("ms3_meta_data.csv", "Multi-sources")}


def _read_csv(path: Path, required: set) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise DataError(path, "AVSBench metadata csv not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = list(reader.fieldnames or ())
    missing = required - set(fields)
    if missing:
        raise DataError(path, f"missing columns {sorted(missing)} (has {fields})")
    return rows, fields


def clip_paths(layout: str, root, task: str, split: str, name: str, category: str = "",
               features_file: str = "vggish.npy", subset: str | None = None) -> AVSBenchClip:
    """The files of clip ``name`` in AVSBench's ``layout`` ("semantic" or "object"; module doc).

    ``subset`` (semantic layout): v1s | v1m | v2, default the task's; it sets the frame count."""
    root, t = Path(root), AVSBENCH_TASKS[task][1]
    if layout == "semantic":
        subset = subset or AVSBENCH_TASKS[task][0]
        t = SUBSET_FRAMES[subset]
        d = root / subset / name
        return AVSBenchClip(name, split, tuple(d / "frames" / f"{i}.jpg" for i in range(t)),
                            tuple(d / "labels_rgb" / f"{i}.png" for i in range(t)), d / "audio.wav", d / features_file)
    if layout != "object" or task not in OBJECT_LAYOUT:
        raise ValueError(f"AVSBench layout {layout!r} has no task {task!r} (object: s4, ms3; semantic: all)")
    if task == "s4":
        base = root / "s4_data"
        frames = base / "visual_frames" / split / category / name
        masks = base / "gt_masks" / split / category / name
        audio = base / "audio_wav" / split / category / f"{name}.wav"
        frame_names = [f"{name}_{i + 1}.png" for i in range(t)]
    else:
        base = root / "ms3_data"
        frames = base / "visual_frames" / name
        masks = base / "gt_masks" / split / name
        audio = base / "audio_wav" / split / f"{name}.wav"
        frame_names = [f"{name}.mp4_{i + 1}.png" for i in range(t)]
    return AVSBenchClip(name, split, tuple(frames / n for n in frame_names),
                        tuple(masks / f"{name}_{i + 1}.png" for i in range(t)), audio,
                        audio.with_name(audio.name + ".vggish.npy"))


def _object_root(root: Path, task: str) -> Path | None:
    """The folder holding ``<task>_meta_data.csv`` (``root`` or its Single-source / Multi-sources)."""
    csv_name, sub = OBJECT_LAYOUT.get(task, (None, None))
    if csv_name is None:
        return None
    for candidate in (root, root / sub):
        if (candidate / csv_name).is_file():
            return candidate
    return None


def find_clips(root, task: str, split: str, *, layout: str = "auto", features_file: str = "vggish.npy",
               subsets: tuple[str, ...] | None = None) -> tuple[str, list[AVSBenchClip]]:
    """(layout used, clips of ``task`` / ``split``) from the metadata csv of an AVSBench release.

    ``subsets`` (semantic layout): which of v1s / v1m / v2 to read (default: the task's own)."""
    root = Path(root)
    if layout == "auto":
        layout = "semantic" if (root / "metadata.csv").is_file() or _object_root(root, task) is None else "object"
    if layout == "semantic":
        path = root / "metadata.csv"
        rows, _ = _read_csv(path, {"uid", "split", "label"})
        subsets = tuple(subsets or (AVSBENCH_TASKS[task][0],))
        unknown = sorted(set(subsets) - set(SUBSET_FRAMES))
        if unknown:
            raise ValueError(f"unknown AVSBench subsets {unknown} (v1s, v1m, v2)")
        clips = [clip_paths("semantic", root, task, split, r["uid"], features_file=features_file, subset=r["label"])
                 for r in rows if r["label"] in subsets and r["split"] == split]
        where = f"{'/'.join(subsets)} clips"
    elif layout == "object":
        base = _object_root(root, task)
        if base is None:
            raise DataError(root / OBJECT_LAYOUT.get(task, ("<task>_meta_data.csv",))[0],
                            f"AVSBench-object csv for {task} not found")
        path = base / OBJECT_LAYOUT[task][0]
        rows, fields = _read_csv(path, {"split"})
        name_key = fields[0]
        category_key = "category" if "category" in fields else (fields[2] if len(fields) > 2 else None)
        if task == "s4" and category_key is None:
            raise DataError(path, f"S4 metadata needs a category column (has {fields})")
        clips = [clip_paths("object", base, task, split, r[name_key], r[category_key] if task == "s4" else "")
                 for r in rows if r["split"] == split]
        where = f"{task} clips"
    else:
        raise ValueError(f"layout must be auto, semantic or object ({layout!r} given)")
    if not clips:
        raise DataError(path, f"no {where} in split {split!r}")
    return layout, clips


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size)."""
    if x.shape[-2:] == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class AVSBenchDataset(torch.utils.data.Dataset):
    """AVSBench clips of one task and split (module doc for the layout and settings).

    Item: dict with ``frames`` (T, 3, size, size) float32 (ImageNet-normalised), ``audio`` (T, 16000)
    float32 waves (``audio="wave"``) or (T, 128) features (``"features"``), ``masks`` (T, size, size)
    float32 in {0, 1} (S4 / MS3) or int64 labels (AVSS), ``valid`` (T,) bool, ``uid``.
    """

    def __init__(self, root, task: str, split: str, *, size: int = 224, audio: str = "wave",
                 snr_db: float | None = None, frame_mix: float = 0.0, seed: int = 0,
                 features_file: str = "vggish.npy", layout: str = "auto", subsets: tuple[str, ...] | None = None):
        if task not in AVSBENCH_TASKS:
            raise ValueError(f"task must be one of {sorted(AVSBENCH_TASKS)} ({task!r} given)")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} ({split!r} given)")
        if audio not in ("wave", "features"):
            raise ValueError(f"audio must be 'wave' or 'features' ({audio!r} given)")
        if not 0.0 <= frame_mix <= 1.0:
            raise ValueError(f"frame_mix must be in [0, 1] ({frame_mix} given)")
        self.root, self.task, self.split, self.size = Path(root), task, split, size
        self.audio, self.snr_db, self.seed, self.features_file = audio, snr_db, seed, features_file
        self.subset, self.frames_per_clip = AVSBENCH_TASKS[task]
        self.layout, self.clips = find_clips(self.root, task, split, layout=layout, features_file=features_file,
                                             subsets=subsets)
        self.classes = self._class_names()
        rng = np.random.default_rng(seed)
        n = len(self.clips)
        chosen = rng.permutation(n)[:round(frame_mix * n)] if n > 1 else []
        self.mixing: dict[int, tuple[int, np.ndarray]] = {}
        for i in chosen:
            other = int(rng.choice([j for j in range(n) if j != i]))
            swapped = rng.permutation(self.frames_per_clip)[:rng.integers(1, self.frames_per_clip + 1)]
            self.mixing[int(i)] = (other, np.sort(swapped))

    def _class_names(self) -> list[str] | None:
        path = self.root / "label2idx.json"
        if not path.is_file():
            return None
        names = json.loads(path.read_text())
        return [name for name, _ in sorted(names.items(), key=lambda kv: kv[1])]

    def __len__(self) -> int:
        return len(self.clips)

    def _mask_required(self, clip: AVSBenchClip, i: int) -> bool:
        """AVSBench labels S4's (v1s) training clips on their first frame only."""
        first_only = self.split == "train" and (self.task == "s4" or "/v1s/" in clip.frames[0].as_posix())
        return not (first_only and i > 0)

    def _load_visual(self, clip: AVSBenchClip):
        frames, masks, valid = [], [], []
        for i, (frame_path, mask_path) in enumerate(zip(clip.frames, clip.masks)):
            if not frame_path.is_file() and frame_path.with_suffix(".png").is_file():
                frame_path = frame_path.with_suffix(".png")
            frame = read_image(frame_path)
            if not mask_path.is_file():
                if self._mask_required(clip, i):
                    raise DataError(mask_path, f"mask file missing (frame {i} of {clip.uid}, {self.task} {self.split})")
                mask = np.zeros(frame.shape[:2], dtype=np.int64)
                valid.append(False)
            else:
                rgb = read_image(mask_path)
                if rgb.shape[:2] != frame.shape[:2]:
                    raise DataError(mask_path, f"mask is {rgb.shape[1]}x{rgb.shape[0]} but its frame {frame_path.name} "
                                               f"is {frame.shape[1]}x{frame.shape[0]}")
                mask = colour_to_labels(rgb, mask_path) if self.task == "avss" else rgb.any(-1).astype(np.int64)
                valid.append(True)
            frames.append(torch.from_numpy(frame).permute(2, 0, 1))
            masks.append(torch.from_numpy(mask))
        return torch.stack(frames), torch.stack(masks), torch.tensor(valid)

    def _load_audio(self, clip: AVSBenchClip, index: int) -> torch.Tensor:
        t = len(clip.frames)
        if self.audio == "features":
            path = clip.features
            if not path.is_file():
                raise DataError(path, "audio feature file missing")
            feats = torch.from_numpy(np.load(path)).float()
            if feats.dim() != 2 or feats.shape[0] != t:
                raise DataError(path, f"audio features must be ({t}, D), got {tuple(feats.shape)}")
            return feats
        from avfast.data.audio import load_audio

        wave = load_audio(clip.audio, SAMPLE_RATE, duration=float(t), channels=1,
                          max_pad=float(t))[0]
        wave = wave.view(t, SAMPLE_RATE)
        if self.snr_db is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            wave = add_noise_at_snr(wave, self.snr_db, generator=g)
        return wave

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        frames, masks, valid = self._load_visual(clip)
        if index in self.mixing:
            other, swapped = self.mixing[index]
            other_frames, _, _ = self._load_visual(self.clips[other])
            if other_frames.shape[-2:] != frames.shape[-2:]:
                other_frames = F.interpolate(other_frames.float(), size=frames.shape[-2:], mode="bilinear",
                                             align_corners=False).round().clamp(0, 255).to(torch.uint8)
            idx = torch.from_numpy(swapped)
            idx = idx[idx < min(frames.shape[0], other_frames.shape[0])]
            frames[idx] = other_frames[idx]
            masks[idx] = 0
        frames = _resize(frames.float() / 255.0, self.size, "bilinear")
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        masks = _resize(masks[:, None].float(), self.size, "nearest")[:, 0]
        frames, audio = (frames - mean) / std, self._load_audio(clip, index)
        pad = self.frames_per_clip - frames.shape[0]
        if pad > 0:  # a 5-frame v1s / v1m clip in the 10-frame AVSS task: zero frames, never scored
            frames, masks, audio = (torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) for x in (frames, masks, audio))
            valid = torch.cat([valid, valid.new_zeros(pad)])
        return {"frames": frames, "audio": audio, "masks": masks.long() if self.task == "avss" else masks,
                "valid": valid, "uid": clip.uid}


def collate_avs(items: list[dict]) -> dict:
    """Stack a list of items into a batch (``uid`` becomes a list)."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "uid"}
    out["uid"] = [it["uid"] for it in items]
    return out


# Synthetic AVS: moving shapes whose sound is known ------------------------------------------------


def _shape_mask(kind: int, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if kind % 3 == 0:
        return dx * dx + dy * dy <= r * r                       # disc
    if kind % 3 == 1:
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)  # square
    return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)  # triangle


class SyntheticAVS:
    """Clips of moving shapes where only the sounding ones are segmented.

    Each clip shows ``shapes`` shapes of distinct classes (1 .. ``num_classes``; class c has its own
    colour, form and tone of ``220 * 2 ** ((c - 1) / 4)`` Hz); ``sounding`` of them (1 for S4, 1-2 for
    MS3 and AVSS) make sound. The ground truth is the sounding shapes' pixels (binary, or their class
    for AVSS). Audio per frame: the sum of the sounding tones (waves) or, with ``audio="features"``,
    a fixed random 128-d embedding per class summed plus noise (a stand-in for VGGish vectors).

    ``tensors(n)`` -> dict of ``frames`` (n, T, 3, H, W) normalised, ``audio``, ``masks``, ``valid`` and
    ``objects`` (every shape's pixels, sounding or not: the answer of a model that ignores the audio).
    """

    def __init__(self, task: str = "s4", *, size: int = 64, frames: int | None = None, num_classes: int = 6,
                 shapes: int = 2, audio: str = "features", audio_dim: int = 128, noise: float = 0.3, seed: int = 0):
        if task not in AVSBENCH_TASKS:
            raise ValueError(f"task must be one of {sorted(AVSBENCH_TASKS)} ({task!r} given)")
        if shapes > num_classes:
            raise ValueError(f"shapes ({shapes}) cannot exceed num_classes ({num_classes})")
        self.task, self.size, self.num_classes, self.shapes = task, size, num_classes, shapes
        self.frames = frames or AVSBENCH_TASKS[task][1]
        self.audio, self.noise, self.seed = audio, noise, seed
        rng = np.random.default_rng(12345)
        self.colours = rng.uniform(0.25, 1.0, size=(num_classes + 1, 3)).astype(np.float32)
        self.embeddings = rng.normal(size=(num_classes + 1, audio_dim)).astype(np.float32) / math.sqrt(audio_dim)

    def clip(self, rng: np.random.Generator) -> dict:
        """One clip as numpy: frames (T, H, W, 3) uint8, labels (T, H, W) int64, classes, sounding, waves (T, 16000)."""
        s, t = self.size, self.frames
        classes = rng.choice(np.arange(1, self.num_classes + 1), size=self.shapes, replace=False)
        max_sounding = 1 if self.task == "s4" else min(2, self.shapes)
        sounding = classes[:rng.integers(1, max_sounding + 1)]
        radius = rng.uniform(0.12, 0.2, size=self.shapes) * s
        start = rng.uniform(0.25, 0.75, size=(self.shapes, 2)) * s
        velocity = rng.uniform(-0.05, 0.05, size=(self.shapes, 2)) * s
        background = rng.uniform(0.0, 0.2, size=3)
        frames = np.empty((t, s, s, 3), np.uint8)
        labels = np.zeros((t, s, s), np.int64)
        objects = np.zeros((t, s, s), bool)
        for i in range(t):
            img = np.broadcast_to(background, (s, s, 3)).copy()
            for j, c in enumerate(classes):
                cx, cy = np.clip(start[j] + velocity[j] * i, radius[j], s - radius[j])
                m = _shape_mask(int(c), cx, cy, radius[j], s, s)
                img[m] = self.colours[c]
                labels[i][m] = c if c in sounding else 0   # later shapes occlude earlier ones
                objects[i][m] = True
            frames[i] = (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)
        tt = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        waves = np.zeros((t, SAMPLE_RATE), np.float32)
        for c in sounding:
            waves += 0.3 * np.sin(2 * np.pi * 220 * 2 ** ((c - 1) / 4) * tt + rng.uniform(0, 2 * np.pi))
        waves += rng.normal(0, 0.01, waves.shape).astype(np.float32)
        return {"frames": frames, "labels": labels, "objects": objects, "classes": classes, "sounding": sounding,
                "waves": waves}

    def _audio(self, clip: dict, rng: np.random.Generator) -> np.ndarray:
        if self.audio == "wave":
            return clip["waves"]
        feats = self.embeddings[clip["sounding"]].sum(0)
        return (feats[None] + rng.normal(0, self.noise / math.sqrt(feats.shape[0]), (self.frames, feats.shape[0])))

    def tensors(self, n: int, *, seed: int | None = None) -> dict:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        clips = [self.clip(rng) for _ in range(n)]
        frames = torch.from_numpy(np.stack([c["frames"] for c in clips])).permute(0, 1, 4, 2, 3).float() / 255.0
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        labels = torch.from_numpy(np.stack([c["labels"] for c in clips]))
        masks = labels if self.task == "avss" else (labels > 0).float()
        audio = torch.from_numpy(np.stack([self._audio(c, rng) for c in clips])).float()
        objects = torch.from_numpy(np.stack([c["objects"] for c in clips])).float()
        return {"frames": (frames - mean) / std, "audio": audio, "masks": masks, "objects": objects,
                "valid": torch.ones(n, self.frames, dtype=torch.bool)}


def write_synthetic_avsbench(root, *, clips_per_split: dict[str, int] | None = None, size: int = 64,
                             seed: int = 0, tasks=("s4", "ms3", "avss"), num_classes: int = 6,
                             audio_rate: int = SAMPLE_RATE, layout: str = "semantic") -> Path:
    """Write synthetic clips in an AVSBench layout (module doc; ``"object"``: S4 and MS3 only).

    Semantic: JPEG frames, colour masks, audio.wav, vggish.npy (the stand-in features),
    metadata.csv, label2idx.json. Object: PNG frames, 0/255 masks, wav, ``<wav>.vggish.npy``,
    ``s4_meta_data.csv`` / ``ms3_meta_data.csv``. S4 training clips get only their first mask, as
    AVSBench's. ``audio_rate`` (a divisor of 16 kHz) writes smaller wav files (the reader resamples).
    Returns ``root``."""
    from avfast.data.audio import save_audio

    if SAMPLE_RATE % audio_rate:
        raise ValueError(f"audio_rate must divide {SAMPLE_RATE} ({audio_rate} given)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clips_per_split = clips_per_split or {"train": 4, "val": 2, "test": 2}
    rows: dict[str, list[dict]] = {}
    for task in tasks:
        subset, _ = AVSBENCH_TASKS[task]
        gen = SyntheticAVS(task, size=size, num_classes=num_classes, seed=seed)
        rng = np.random.default_rng([seed, list(AVSBENCH_TASKS).index(task)])
        for split, count in clips_per_split.items():
            for k in range(count):
                uid = f"{subset}_{split}_{k:03d}"
                clip = gen.clip(rng)
                category = f"shape_{int(clip['sounding'][0])}"
                paths = clip_paths(layout, root, task, split, uid, category)
                for i in range(gen.frames):
                    frame_path = paths.frames[i] if layout == "semantic" else paths.frames[i].with_suffix(".png")
                    write_image(frame_path, clip["frames"][i])
                    if task == "s4" and split == "train" and i > 0:
                        continue
                    labels = clip["labels"][i]
                    write_image(paths.masks[i], labels_to_colour(labels) if layout == "semantic"
                                else (labels > 0).astype(np.uint8) * 255)
                paths.audio.parent.mkdir(parents=True, exist_ok=True)
                save_audio(paths.audio, clip["waves"].reshape(1, -1)[:, ::SAMPLE_RATE // audio_rate], audio_rate,
                           codec="pcm_s16le")
                np.save(paths.features, gen._audio(clip, rng).astype(np.float32))
                sounding = "_".join(str(int(c)) for c in clip["sounding"])
                if layout == "semantic":
                    row = {"vid": uid, "uid": uid, "s_min": 0, "s_sec": 0, "a_obj": sounding, "split": split,
                           "label": subset}
                    rows.setdefault("metadata.csv", []).append(row)
                else:
                    row = {"name": uid, "a_obj": sounding, "category": category, "split": split}
                    rows.setdefault(OBJECT_LAYOUT[task][0], []).append(row)
    for name, table in rows.items():
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    if layout == "semantic":
        names = {"background": 0, **{f"shape_{c}": c for c in range(1, AVSS_NUM_CLASSES)}}
        (root / "label2idx.json").write_text(json.dumps(names, indent=0))
    return root
