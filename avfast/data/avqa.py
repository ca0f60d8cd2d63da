"""MUSIC-AVQA (seed 003): question json, slot filling, vocabularies, feature files, synthetic scenes.

Layout assumed (the public MUSIC-AVQA release with pre-extracted features, as its net_avst code reads it)::

    root/json/avqa-{train,val,test}.json       # list of questions (below)
    root/feats/vggish/<video_id>.npy           # (S, 128) audio features, one per second (S = 60)
    root/feats/res18_14x14/<video_id>.npy      # (S, 512, 14, 14) ResNet-18 maps, one per second

A question::

    {"video_id": "00000272", "question_id": 36, "type": "[\\"Audio-Visual\\", \\"Temporal\\"]",
     "question_content": "Where is the <FL> sounding instrument?", "templ_values": "[\\"first\\"]",
     "anser": "left"}

``type`` and ``templ_values`` are JSON-encoded lists (plain lists are accepted too); the answer key is
spelt ``anser`` in the release (``answer`` accepted). Each ``<Slot>`` word (``<Object>``, ``<LR>``,
``<FL>``, ...) is replaced by the next ``templ_values`` entry, in order; a count mismatch or an
answer outside the vocabulary raises ``DataError`` naming the question. Features are sampled every
S // T seconds (T = 10 segments, the public code's ``[::6]``).

``ANSWERS`` is our reconstruction of the 42 answers (the public code collects them from the training
json in order of appearance; ``answer_vocabulary(items)`` does the same for a real release).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from avfast.data.errors import DataError

__all__ = ["ANSWERS", "INSTRUMENTS", "QUESTION_TYPES", "MAX_QUESTION_LEN", "parse_question", "question_type",
           "question_vocabulary", "answer_vocabulary", "encode_question", "load_questions", "AVQADataset",
           "SyntheticAVQA", "write_avqa_layout"]

INSTRUMENTS = ("accordion", "acoustic_guitar", "bagpipe", "banjo", "bassoon", "cello", "clarinet", "congas",
               "drum", "electric_bass", "erhu", "flute", "guzheng", "piano", "pipa", "saxophone", "suona",
               "trumpet", "tuba", "ukulele", "violin", "xylophone")
ANSWERS = ("yes", "no", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "more than ten", "left", "middle", "right", "indoor", "outdoor", "simultaneously") + INSTRUMENTS
assert len(ANSWERS) == 42
# the seed's results table, in its column order: (modality, question kind)
QUESTION_TYPES = (("Audio", "Counting"), ("Audio", "Comparative"), ("Visual", "Counting"), ("Visual", "Location"),
                  ("Audio-Visual", "Existential"), ("Audio-Visual", "Location"), ("Audio-Visual", "Counting"),
                  ("Audio-Visual", "Comparative"), ("Audio-Visual", "Temporal"))
MAX_QUESTION_LEN = 14            # the public code pads questions to 14 words
_SLOT = re.compile(r"^<[A-Za-z]+>$")


def _list_field(item: dict, key: str, qid) -> list:
    value = item.get(key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"question {qid}", f"{key} is not a JSON list ({value!r}: {e.msg})") from None
    if not isinstance(value, list):
        raise DataError(f"question {qid}", f"{key} must be a list, got {value!r}")
    return value


def parse_question(item: dict) -> list[str]:
    """The question's words with its ``<Slot>`` words filled from ``templ_values`` (final '?' dropped)."""
    qid = item.get("question_id", "?")
    text = item.get("question_content")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"question {qid}", "question_content is missing or empty")
    words = text.rstrip().rstrip("?").split()
    values = _list_field(item, "templ_values", qid)
    slots = [i for i, w in enumerate(words) if w.startswith("<") or w.endswith(">")]
    for i in slots:
        if not _SLOT.match(words[i]):
            raise DataError(f"question {qid}", f"malformed template slot {words[i]!r} in {text!r}")
    if len(slots) != len(values):
        raise DataError(f"question {qid}", f"template {text!r} has {len(slots)} slots but templ_values has "
                                           f"{len(values)} values {values}")
    for i, value in zip(slots, values):
        words[i] = str(value)
    return words


def question_type(item: dict) -> int:
    """Index into ``QUESTION_TYPES`` of the item's ``type`` (e.g. ["Audio-Visual", "Temporal"])."""
    qid = item.get("question_id", "?")
    kind = tuple(_list_field(item, "type", qid))
    if kind not in QUESTION_TYPES:
        raise DataError(f"question {qid}",
                        f"unknown question type {list(kind)}; known: {[list(t) for t in QUESTION_TYPES]}")
    return QUESTION_TYPES.index(kind)


def _answer(item: dict) -> str:
    answer = item.get("anser", item.get("answer"))
    if not isinstance(answer, str):
        raise DataError(f"question {item.get('question_id', '?')}", "no answer (key 'anser' or 'answer')")
    return answer


def question_vocabulary(items: list[dict]) -> list[str]:
    """``["<pad>"]`` + the filled questions' words in order of first appearance (the public code's)."""
    vocab, seen = ["<pad>"], {"<pad>"}
    for item in items:
        for w in parse_question(item):
            if w not in seen:
                seen.add(w)
                vocab.append(w)
    return vocab


def answer_vocabulary(items: list[dict]) -> list[str]:
    """The answers of ``items`` in order of first appearance."""
    return list(dict.fromkeys(_answer(item) for item in items))


def encode_question(words: list[str], vocab: dict[str, int], *, max_len: int = MAX_QUESTION_LEN,
                    qid="?") -> torch.Tensor:
    """Words -> (max_len,) int64 ids, 0-padded; unknown words raise ``DataError``."""
    if len(words) > max_len:
        raise DataError(f"question {qid}", f"{len(words)} words > max_len {max_len}")
    unknown = [w for w in words if w not in vocab]
    if unknown:
        raise DataError(f"question {qid}", f"words {unknown} are not in the question vocabulary")
    ids = torch.zeros(max_len, dtype=torch.long)
    ids[:len(words)] = torch.tensor([vocab[w] for w in words], dtype=torch.long)
    return ids


def load_questions(path) -> list[dict]:
    """The json list of questions at ``path`` (``DataError`` when missing or not a list)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "question json not found")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise DataError(path, "expected a JSON list of questions")
    return items


class AVQADataset(torch.utils.data.Dataset):
    """MUSIC-AVQA questions with their features.

    Items: ``audio`` (T, 128) float32, ``visual`` (T, C, h, w) float32, ``question`` (max_len,) int64,
    ``answer`` () int64 index into ``answers``, ``qtype`` () int64 index into ``QUESTION_TYPES``.
    The question vocabulary is built from the questions of every split present (train's words first,
    in the public code's order) unless given, so a test word unseen in training is no error.
    """

    def __init__(self, root, split: str = "train", *, segments: int = 10, answers=ANSWERS, vocab=None,
                 max_len: int = MAX_QUESTION_LEN, audio_dir: str = "feats/vggish",
                 visual_dir: str = "feats/res18_14x14"):
        self.root = Path(root)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train|val|test, got {split!r}")
        self.items = load_questions(self.root / "json" / f"avqa-{split}.json")
        if vocab is None:  # question words of every split present, train first (no answers involved)
            vocab = question_vocabulary([q for name in ("train", "val", "test")
                                         if (self.root / "json" / f"avqa-{name}.json").is_file()
                                         for q in load_questions(self.root / "json" / f"avqa-{name}.json")])
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.answers = {a: i for i, a in enumerate(answers)}
        self.segments, self.max_len = segments, max_len
        self.audio_dir, self.visual_dir = self.root / audio_dir, self.root / visual_dir
        self.encoded = []
        for item in self.items:  # every question is checked up front: errors name the question
            qid = item.get("question_id", "?")
            answer = _answer(item)
            if answer not in self.answers:
                raise DataError(f"question {qid}",
                                f"answer {answer!r} is not in the {len(self.answers)}-answer vocabulary")
            if "video_id" not in item:
                raise DataError(f"question {qid}", "no video_id")
            self.encoded.append((encode_question(parse_question(item), self.vocab, max_len=max_len, qid=qid),
                                 self.answers[answer], question_type(item)))

    def __len__(self) -> int:
        return len(self.items)

    def _features(self, directory: Path, video: str, tail: tuple | None) -> torch.Tensor:
        path = directory / f"{video}.npy"
        if not path.is_file():
            raise DataError(path, "feature file not found")
        try:
            x = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise DataError(path, f"not a .npy array ({e})") from None
        if x.ndim != 1 + (len(tail) if tail else 3) or (tail is not None and x.shape[1:] != tail):
            raise DataError(path, f"expected (S, {', '.join(map(str, tail)) if tail else 'C, h, w'}) features, "
                                  f"got {x.shape}")
        if x.shape[0] < self.segments:
            raise DataError(path, f"{x.shape[0]} segments < T = {self.segments}")
        step = x.shape[0] // self.segments
        return torch.from_numpy(np.ascontiguousarray(x[::step][:self.segments], dtype=np.float32))

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        question, answer, qtype = self.encoded[i]
        video = str(item["video_id"])
        return {"audio": self._features(self.audio_dir, video, (128,)),
                "visual": self._features(self.visual_dir, video, None),  # (C, h, w): any map size
                "question": question, "answer": torch.tensor(answer), "qtype": torch.tensor(qtype)}


# Synthetic scenes ---------------------------------------------------------------------------------

# (type index, template, how the answer is found); see SyntheticAVQA
_TEMPLATES = {
    0: "How many instruments are sounding in the video?",
    1: "Is the <Object> louder than the <Object>?",
    2: "How many instruments are in the video?",
    3: "What is the instrument on the <LR>?",
    4: "Is the <Object> in the video making sound?",
    5: "Where is the <FL> sounding instrument?",
    6: "How many sounding instruments are on the <LR>?",
    7: "Is the instrument on the <LR> louder than the instrument on the <LR>?",
    8: "What is the <FL> sounding instrument?",
}
_NUMBERS = ("zero", "one", "two", "three")


class SyntheticAVQA:
    """Audio-visual scenes with answerable questions of all nine types (CPU-sized).

    A scene: two instruments (distinct classes of ``classes``), one at a random position on the
    left half of a ``grid`` x ``grid`` map, one on the right, and with probability 1/2 a third, silent
    one. The left and right ones sound one after the other: the first from segment 0 to a random
    switch segment, the second from there to the end (with probability 0.3 the first sounds
    throughout and the second never). Audio per segment: the
    sum of the sounding instruments' 128-d signatures times their loudness, plus noise. Visual maps
    per segment (``dim`` channels): each instrument's visual signature plus an "objectness" vector at
    its position together with a code of its side (left/right half; CNN features know roughly where
    they are), plus noise everywhere.

    Which questions need what: Q-only can answer from the answer prior alone; the T-averaged audio
    answers "how many sounding", "is X sounding", "is X louder" (energy); the averaged visual answers
    "how many instruments"; "where is the first/last sounding", "which is the first/last sounding"
    need the order over time (temporal grounding with segment positions) and "where"/"on the left"
    with sound need the sounding position (spatial grounding). So accuracy rises along the
    seed's ladder Q < AV+Q < AV+Q+TG+SG.
    """

    def __init__(self, *, segments: int = 10, dim: int = 64, grid: int = 4, classes: int = 6, noise: float = 0.03,
                 types: tuple = tuple(range(len(QUESTION_TYPES))), seed: int = 0):
        if not types or any(not 0 <= k < len(QUESTION_TYPES) for k in types):
            raise ValueError(f"SyntheticAVQA: types must index QUESTION_TYPES, got {types}")
        self.types = tuple(types)
        if grid < 2 or grid % 2:
            raise ValueError(f"SyntheticAVQA: grid must be even and >= 2 (left/right halves), got {grid}")
        if not 3 <= classes <= len(INSTRUMENTS) or segments < 4:
            raise ValueError(f"SyntheticAVQA: need 3 <= classes <= {len(INSTRUMENTS)} and segments >= 4")
        self.segments, self.dim, self.grid, self.classes, self.noise = segments, dim, grid, classes, noise
        g = torch.Generator().manual_seed(seed)
        # orthonormal signatures: classes, objectness and the two side codes do not overlap
        self.audio_sig = torch.linalg.qr(torch.randn(128, classes, generator=g))[0].T.contiguous()
        if dim < classes + 3:
            raise ValueError(f"SyntheticAVQA: dim must be >= classes + 3 ({classes + 3}), got {dim}")
        basis = torch.linalg.qr(torch.randn(dim, classes + 3, generator=g))[0].T.contiguous()
        self.visual_sig, self.objectness = basis[:classes], basis[classes] * 0.7
        self.side_code = basis[classes + 1:] * 0.5
        self.names = INSTRUMENTS[:classes]

    # one scene -> (audio (T, 128), visual (T, dim, grid, grid), objects)
    def _scene(self, rng: np.random.Generator):
        t, half = self.segments, self.grid // 2
        cls = rng.choice(self.classes, size=3, replace=False)
        objects = []
        for side in (0, 1):  # 0 = left, 1 = right
            objects.append({"cls": int(cls[side]), "side": side, "row": int(rng.integers(self.grid)),
                            "col": int(rng.integers(half)) + side * half})
        order = rng.permutation(2)
        switch = int(rng.integers(3, t - 2)) if rng.random() > 0.3 else t
        objects[order[0]].update(onset=0, offset=switch)
        objects[order[1]].update(onset=switch, offset=t)
        loud = rng.permutation([0.6, 1.2])
        for o, l in zip(objects, loud):
            o["loud"] = float(l)
        if rng.random() < 0.5:
            side = int(rng.integers(2))
            while True:
                row, col = int(rng.integers(self.grid)), int(rng.integers(half)) + side * half
                if all((row, col) != (o["row"], o["col"]) for o in objects):
                    break
            objects.append({"cls": int(cls[2]), "side": side, "row": row, "col": col, "onset": t, "offset": t,
                            "loud": 0.0})
        return objects

    def _features(self, objects, g: torch.Generator):
        t, d, n = self.segments, self.dim, self.grid
        audio = torch.randn(t, 128, generator=g) * self.noise
        for o in objects:
            audio[o["onset"]:o["offset"]] += o["loud"] * self.audio_sig[o["cls"]]
        base = torch.zeros(d, n, n)
        for o in objects:
            base[:, o["row"], o["col"]] += self.visual_sig[o["cls"]] + self.objectness + self.side_code[o["side"]]
        visual = base[None] + torch.randn(t, d, n, n, generator=g) * self.noise
        return audio, visual

    def _question(self, kind: int, objects, rng: np.random.Generator):
        """(templ_values, answer) or None when the scene cannot ask this kind."""
        t = self.segments
        main = objects[:2]
        sounding = [o for o in objects if o["onset"] < t]
        energy = lambda o: o["loud"] * (o["offset"] - o["onset"])  # noqa: E731
        side = lambda s: "left" if s == 0 else "right"  # noqa: E731
        first_last = sorted(sounding, key=lambda o: o["onset"])
        if kind == 0:
            return [], _NUMBERS[len(sounding)]
        if kind == 1:
            a, b = rng.permutation(main)
            return [self.names[a["cls"]], self.names[b["cls"]]], "yes" if energy(a) > energy(b) else "no"
        if kind == 2:
            return [], _NUMBERS[len(objects)]
        if kind == 3:
            sides = [o["side"] for o in objects]
            single = [s for s in (0, 1) if sides.count(s) == 1]
            s = int(rng.choice(single))
            return [side(s)], self.names[next(o["cls"] for o in objects if o["side"] == s)]
        if kind == 4:  # half the time a sounding one, else a silent or absent class
            if rng.random() < 0.5:
                return [self.names[sounding[int(rng.integers(len(sounding)))]["cls"]]], "yes"
            present = {o["cls"] for o in objects}
            quiet = {o["cls"] for o in objects if o["onset"] >= t} | (set(range(self.classes)) - present)
            return [self.names[int(rng.choice(sorted(quiet)))]], "no"
        if kind in (5, 8):
            if len(first_last) < 2:
                return None
            which = int(rng.integers(2))
            o = first_last[0 if which == 0 else -1]
            return [("first", "last")[which]], side(o["side"]) if kind == 5 else self.names[o["cls"]]
        if kind == 6:
            s = int(rng.integers(2))
            return [side(s)], _NUMBERS[sum(o["side"] == s for o in sounding)]
        if kind == 7:
            a, b = rng.permutation(main)
            return [side(a["side"]), side(b["side"])], "yes" if energy(a) > energy(b) else "no"
        raise ValueError(kind)

    def items(self, n: int, *, seed: int = 0) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
        """``n`` questions in the MUSIC-AVQA json format (one scene each, ``video_id`` = its index),
        with the scenes' audio (n, T, 128) and visual (n, T, dim, grid, grid) features."""
        rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(seed)
        items, audio, visual = [], [], []
        while len(items) < n:
            objects = self._scene(rng)
            kind = self.types[int(rng.integers(len(self.types)))]
            qa = self._question(kind, objects, rng)
            if qa is None:
                continue
            values, answer = qa
            a, v = self._features(objects, g)
            items.append({"video_id": f"{len(items):06d}", "question_id": len(items),
                          "type": json.dumps(list(QUESTION_TYPES[kind])), "question_content": _TEMPLATES[kind],
                          "templ_values": json.dumps(values), "anser": answer})
            audio.append(a)
            visual.append(v)
        return items, torch.stack(audio), torch.stack(visual)

    def vocabulary(self) -> list[str]:
        """The question vocabulary of every question these scenes can ask (train/val/test share it)."""
        words = set()
        for kind, text in _TEMPLATES.items():
            for w in text.rstrip("?").split():
                if not _SLOT.match(w):
                    words.add(w)
        words |= set(self.names) | {"left", "right", "first", "last"}
        return ["<pad>"] + sorted(words)

    def tensors(self, n: int, *, seed: int = 0, max_len: int = MAX_QUESTION_LEN) -> dict:
        """``n`` encoded questions: audio, visual, question (n, max_len), answer (n,), qtype (n,)."""
        items, audio, visual = self.items(n, seed=seed)
        vocab = {w: i for i, w in enumerate(self.vocabulary())}
        answers = {a: i for i, a in enumerate(ANSWERS)}
        question = torch.stack([encode_question(parse_question(it), vocab, max_len=max_len, qid=it["question_id"])
                                for it in items])
        return {"audio": audio, "visual": visual, "question": question,
                "answer": torch.tensor([answers[_answer(it)] for it in items]),
                "qtype": torch.tensor([question_type(it) for it in items])}


def write_avqa_layout(root, generator: SyntheticAVQA, counts: dict[str, int], *, seconds: int = 60,
                      seed: int = 0) -> Path:
    """Write synthetic scenes in the MUSIC-AVQA layout (json + per-video .npy features with
    ``seconds`` rows, each segment repeated) under ``root``; ``counts``: questions per split."""
    root = Path(root)
    (root / "json").mkdir(parents=True, exist_ok=True)
    for d in ("feats/vggish", "feats/res18_14x14"):
        (root / d).mkdir(parents=True, exist_ok=True)
    repeat = max(seconds // generator.segments, 1)
    for k, (split, n) in enumerate(counts.items()):
        items, audio, visual = generator.items(n, seed=seed * 100 + k)
        for it, a, v in zip(items, audio, visual):
            it["video_id"] = f"{split}_{it['video_id']}"
            np.save(root / "feats/vggish" / f"{it['video_id']}.npy", a.repeat_interleave(repeat, 0).numpy())
            np.save(root / "feats/res18_14x14" / f"{it['video_id']}.npy",
                    v.repeat_interleave(repeat, 0).numpy().astype(np.float16))
        (root / "json" / f"avqa-{split}.json").write_text(json.dumps(items, indent=1))
    return root
