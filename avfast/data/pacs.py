"""PACS (physical audiovisual commonsense) data: a question about a pair of objects, label = which object.

Layout read by ``load_pacs`` (pre-extracted features, so no hub weights are needed)::

    root/
      json/{train,val,test}.json            # PACS
      json/{train,val,test}_material.json   # PACS-material subset (same item format)
      json/materials.json                   # optional {object id: material name}
      features/text/<item id>.npy           # question CLS feature (text_dim,)  (DeBERTa-v3-large: 1024)
      features/video/<object id>.npy        # frame features (T, video_dim)      (ViT-B/16 on 8 frames: 768)
      features/audio/<object id>.npy        # audio features (audio_dim,) or (Ta, audio_dim) (AST: 768)

A split json is a list of items, or a dict ``{item id: item}`` (the public PACS release keys items
by id); an item has ``obj1``, ``obj2`` (object ids), ``label`` (0: obj1 is the answer, 1: obj2) and
optionally ``id`` and ``question`` (text, unused: the features hold it). The material of an item is the
material of its answer object (``materials.json``), used for per-material accuracy.

``SyntheticPACS`` generates the same tensors for tests and the demo; ``write_pacs_layout`` writes
them in the layout above (the shipped fixture tests/fixtures/pacs was written by it).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from avfast.data.errors import DataError

__all__ = ["PACS_SPLITS", "load_pacs", "pacs_split_file", "SyntheticPACS", "write_pacs_layout"]

PACS_SPLITS = ("train", "val", "test")
_REQUIRED = ("obj1", "obj2", "label")


def pacs_split_file(root: Path, split: str, subset: str) -> Path:
    """The json of ``split`` (train | val | test) in ``subset`` (pacs | material) under ``root``."""
    if split not in PACS_SPLITS:
        raise ValueError(f"PACS split must be one of {PACS_SPLITS} ({split!r} given)")
    if subset not in ("pacs", "material"):
        raise ValueError(f"PACS subset must be 'pacs' or 'material' ({subset!r} given)")
    return root / "json" / (f"{split}.json" if subset == "pacs" else f"{split}_material.json")


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"malformed json ({exc})") from None


def _items(path: Path) -> list[dict]:
    data = _read_json(path)
    if isinstance(data, dict):
        data = [{"id": str(k), **v} if isinstance(v, dict) else v for k, v in data.items()]
    if not isinstance(data, list):
        raise DataError(path, f"expected a list of items or a dict of items, got {type(data).__name__}")
    items = []
    for n, item in enumerate(data):
        where = f"item {n}" + (f" ({item.get('id')})" if isinstance(item, dict) and "id" in item else "")
        if not isinstance(item, dict):
            raise DataError(path, f"{where}: expected an object, got {type(item).__name__}")
        missing = [k for k in _REQUIRED if k not in item]
        if missing:
            raise DataError(path, f"{where}: missing key(s) {missing}")
        if item["label"] not in (0, 1):
            raise DataError(path, f"{where}: label must be 0 or 1 ({item['label']!r} given)")
        if item["obj1"] == item["obj2"]:
            raise DataError(path, f"{where}: obj1 and obj2 are the same object {item['obj1']!r}")
        items.append({**item, "id": str(item.get("id", n))})
    return items


def _feature(path: Path, item: str, ndim: tuple[int, ...]) -> torch.Tensor:
    if not path.is_file():
        raise DataError(path, f"feature file not found (item {item})")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(path, f"unreadable feature file (item {item}): {exc}") from None
    if arr.ndim not in ndim or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(path, f"item {item}: expected a float array with {' or '.join(map(str, ndim))} dims, "
                              f"got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(path, f"item {item}: NaN or inf in the features")
    return torch.from_numpy(arr.astype(np.float32))


def load_pacs(root, split: str = "train", subset: str = "pacs") -> dict:
    """One split of a PACS layout as stacked tensors.

    Returns text (N, Dt), video1/video2 (N, T, Dv), audio1/audio2 (N, [Ta,] Da), label (N,) int64,
    material (N,) int64 (index into ``materials``; -1 unknown), ``materials`` (list of names) and
    ``ids`` (item ids). Every object must have the same feature shapes; a mismatch names the item.
    """
    root = Path(root)
    path = pacs_split_file(root, split, subset)
    items = _items(path)
    if not items:
        raise DataError(path, "no items")
    mat_path = root / "json" / "materials.json"
    materials_of = _read_json(mat_path) if mat_path.exists() else {}
    if not isinstance(materials_of, dict):
        raise DataError(mat_path, "expected {object id: material name}")
    names = sorted(set(map(str, materials_of.values())))
    cache: dict[tuple[str, str], torch.Tensor] = {}
    cols: dict[str, list] = {k: [] for k in ("text", "video1", "video2", "audio1", "audio2")}
    labels, material = [], []
    for item in items:
        iid = item["id"]
        cols["text"].append(_feature(root / "features" / "text" / f"{iid}.npy", iid, (1,)))
        for w in (1, 2):
            obj = str(item[f"obj{w}"])
            for kind, ndim in (("video", (2,)), ("audio", (1, 2))):
                key = (kind, obj)
                if key not in cache:
                    cache[key] = _feature(root / "features" / kind / f"{obj}.npy", f"{iid} ({kind} of {obj})", ndim)
                cols[f"{kind}{w}"].append(cache[key])
        labels.append(int(item["label"]))
        answer = str(item["obj1"] if item["label"] == 0 else item["obj2"])
        material.append(names.index(str(materials_of[answer])) if answer in materials_of else -1)
    out = {}
    for key, values in cols.items():
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1 or (key.endswith("2") and tuple(values[0].shape) != tuple(cols[key[:-1] + "1"][0].shape)):
            ref = tuple(cols[key[:-1] + "1"][0].shape) if key.endswith("2") else tuple(values[0].shape)
            bad = next(i for i, v in enumerate(values) if tuple(v.shape) != ref)
            raise DataError(path, f"item {items[bad]['id']}: {key} features {tuple(values[bad].shape)} do not match "
                                  f"the others {ref} (mismatched pair)")
        out[key] = torch.stack(values)
    out["label"] = torch.tensor(labels, dtype=torch.long)
    out["material"] = torch.tensor(material, dtype=torch.long)
    out["materials"], out["ids"] = names, [it["id"] for it in items]
    return out


class SyntheticPACS:
    """PACS-shaped pairs whose answer follows hidden physical properties, built so that the seed's
    ablation order shows: LateFusion < + DSE < + DCL.

    Each object has a material c (of ``materials``); a property table P (materials x questions)
    decides the answer: the object with the larger P[c, question]. The question's text feature
    encodes the question type. The material is carried by
      - the video's *dynamics*: a zero-mean oscillation over frames whose direction is the material's
        (mean pooling over frames cancels it; a sequence encoder (DSE) can read it),
      - a weak static video cue and a weak audio cue (all a pooled baseline can use),
    and each object's cues are perturbed by strong per-object noise, so pooling the features of
    related objects in the batch (CLM) denoises them. Sizes are kept small by default for CPU tests.
    """

    def __init__(self, *, materials: int = 3, questions: int = 3, frames: int = 8, text_dim: int = 32,
                 video_dim: int = 32, audio_dim: int = 32, audio_frames: int = 4, static_cue: float = 0.1,
                 audio_cue: float = 0.1, dynamic_cue: float = 2.0, object_noise: float = 1.5,
                 frame_noise: float = 0.3, seed: int = 0):
        if materials < 2 or questions < 1 or frames < 2:
            raise ValueError("SyntheticPACS: need >= 2 materials, >= 1 question, >= 2 frames")
        self.materials, self.questions, self.frames, self.audio_frames = materials, questions, frames, audio_frames
        self.dims = {"text": text_dim, "video": video_dim, "audio": audio_dim}
        self.static_cue, self.audio_cue, self.dynamic_cue = static_cue, audio_cue, dynamic_cue
        self.object_noise, self.frame_noise = object_noise, frame_noise
        g = torch.Generator().manual_seed(seed)
        # distinct property values per question: a random permutation of the materials' ranks
        self.properties = torch.stack([torch.randperm(materials, generator=g) for _ in range(questions)], 1).float()
        self.question_codes = torch.nn.functional.normalize(torch.randn(questions, text_dim, generator=g), dim=-1) * 3
        unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
        self.static_codes, self.dynamic_codes = unit(materials, video_dim), unit(materials, video_dim)
        self.audio_codes = unit(materials, audio_dim)
        self.material_names = [f"material_{i}" for i in range(materials)]

    def objects(self, material: torch.Tensor, g: torch.Generator) -> dict:
        """Video (N, T, Dv) and audio (N, Ta, Da) features of objects of the given materials (N,)."""
        N, T, Dv, Da = material.shape[0], self.frames, self.dims["video"], self.dims["audio"]
        noise = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        ramp = (torch.arange(T) - (T - 1) / 2) / (T / 2)                                  # (T,), zero mean
        wave = ramp.expand(N, T) * (0.5 + torch.rand(N, 1, generator=g))                    # per-object speed
        direction = self.dynamic_codes[material] + self.object_noise * noise(N, Dv) / math.sqrt(Dv) * 2
        appearance = self.static_cue * self.static_codes[material] + noise(N, Dv) / math.sqrt(Dv) * 2
        video = (appearance[:, None] + self.dynamic_cue * wave[..., None] * direction[:, None]
                 + self.frame_noise * noise(N, T, Dv) / math.sqrt(Dv) * 2)
        sound = self.audio_cue * self.audio_codes[material] + noise(N, Da) / math.sqrt(Da) * 2
        audio = sound[:, None] + self.frame_noise * noise(N, self.audio_frames, Da) / math.sqrt(Da) * 2
        return {"video": video, "audio": audio}

    def tensors(self, n: int, seed: int = 0) -> dict:
        """n pairs: text (n, Dt), video1/2 (n, T, Dv), audio1/2 (n, Ta, Da), label, material (answer's)."""
        g = torch.Generator().manual_seed(seed)
        m1 = torch.randint(0, self.materials, (n,), generator=g)
        m2 = (m1 + torch.randint(1, self.materials, (n,), generator=g)) % self.materials   # never the same
        q = torch.randint(0, self.questions, (n,), generator=g)
        label = (self.properties[m2, q] > self.properties[m1, q]).long()
        text = self.question_codes[q] + 0.1 * torch.randn(n, self.dims["text"], generator=g)
        o1, o2 = self.objects(m1, g), self.objects(m2, g)
        return {"text": text, "video1": o1["video"], "video2": o2["video"], "audio1": o1["audio"],
                "audio2": o2["audio"], "label": label, "material": torch.where(label == 0, m1, m2),
                "material1": m1, "material2": m2, "question": q}


def write_pacs_layout(root, generator: SyntheticPACS, sizes: dict[str, int], *, seed: int = 0,
                      material_subset: int = 0) -> Path:
    """Write synthetic pairs in the PACS layout (features as .npy, list-of-items json, materials.json).

    ``sizes``: items per split; ``material_subset`` > 0 also writes the first that many items of each
    split as ``{split}_material.json``. Objects are written once per (split, pair, side).
    """
    root = Path(root)
    for sub in ("json", "features/text", "features/video", "features/audio"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    materials = {}
    for s_index, (split, n) in enumerate(sizes.items()):
        t = generator.tensors(n, seed=seed * 10 + s_index)
        items = []
        for i in range(n):
            iid, objs = f"{split}_{i:04d}", (f"{split}_{i:04d}_a", f"{split}_{i:04d}_b")
            np.save(root / "features" / "text" / f"{iid}.npy", t["text"][i].numpy())
            for w, obj in zip((1, 2), objs):
                np.save(root / "features" / "video" / f"{obj}.npy", t[f"video{w}"][i].numpy())
                np.save(root / "features" / "audio" / f"{obj}.npy", t[f"audio{w}"][i].numpy())
                materials[obj] = generator.material_names[int(t[f"material{w}"][i])]
            items.append({"id": iid, "obj1": objs[0], "obj2": objs[1], "label": int(t["label"][i]),
                          "question": f"synthetic question type {int(t['question'][i])}"})
        (root / "json" / f"{split}.json").write_text(json.dumps(items, indent=1))
        if material_subset:
            (root / "json" / f"{split}_material.json").write_text(json.dumps(items[:material_subset], indent=1))
    (root / "json" / "materials.json").write_text(json.dumps(materials, indent=1, sort_keys=True))
    return root

