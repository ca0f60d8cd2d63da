"""Evaluation: cross-modal retrieval (R@k, median rank) and a linear probe on frozen embeddings.

Retrieval: every clip's video embedding queries the gallery of all clips' audio embeddings
(video->audio) and the other way round (audio->video); the clip's own pair is the one correct item.
The gallery stays sharded across ranks (each rank embeds ``rank::world`` of the clips and keeps
its share), queries stream past it in chunks: per chunk each rank takes its local top-k with
``avfast.ops.affinity_topk`` (the Q x N similarity matrix is never stored) and counts the gallery
items that beat the correct one; top-k lists are merged and counts summed across ranks. Memory per
rank: O(N / world x D + chunk x k). R@k comes from the merged top-k lists, ranks from the counts.

Probes (seed 001 B.1-B.3): frozen pre-projection backbone features (1024-d; ``embed_clips(...,
features=True)``), pseudo-stereo audio as in pretraining; a linear probe and an MLP probe whose
hyper-parameters come from a small grid (HEAR-style) selected on a validation split carved from the
training split, never on test (``probe_task``); top-1 and mean-per-class accuracy. The standard
split files (ESC-50's five folds, UCF101 split 1, VGGSound's test csv) are read by ``read_split``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avfast.metrics.retrieval import retrieval_summary
from avfast.train.distributed import all_gather_cat, all_reduce_sum, unwrap_model
from avfast.train.progress import track
from avfast.train.trainer import move_to_device

__all__ = ["embed_clips", "sharded_retrieval", "retrieval_metrics", "linear_probe", "mlp_probe", "probe_task",
           "top1_accuracy", "mean_per_class_accuracy", "carve_validation", "read_split", "ProbeSplit", "MLP_GRID",
           "LINEAR_GRID"]


def _features(model: nn.Module, video=None, audio_p=None, audio_s=None) -> dict:
    """Pre-projection backbone features (``DubModel.features_video`` / ``features_audio``)."""
    out = {}
    if video is not None:
        out["v"] = model.features_video(video)
    if audio_p is not None:
        out["a_p"] = model.features_audio(audio_p)
    return out


@torch.no_grad()
def embed_clips(model: nn.Module, loader, device: torch.device, autocast_dtype: torch.dtype | None = None, *,
                features: bool = False) -> dict:
    """Embed a loader of eval batches: ``{"v", "a", "a_s" (those present): (N, D), "clip": (N,)}``.

    ``features=True``: the backbones' pre-projection features (``v``, ``a``; the probes' input)
    instead of the normalised head outputs."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    out: dict[str, list] = {}
    try:
        for batch in track(loader, desc="embedding clips", unit="batch"):
            batch = move_to_device(batch, device)
            inputs = {"video": batch.get("video"), "audio_p": batch.get("audio"), "audio_s": batch.get("audio_s")}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                given = {k: v for k, v in inputs.items() if v is not None}
                z = _features(model, **given) if features else model(**given)
            for key, name in (("v", "v"), ("a_p", "a"), ("a_s", "a_s")):
                if key in z:
                    out.setdefault(name, []).append(z[key].float())
            out.setdefault("clip", []).append(batch["clip"])
    finally:
        model.train(was_training)
    emb = {k: torch.cat(v) for k, v in out.items()}
    # a bad clip replaced by another (data.on_error="skip") may repeat a clip: keep its first copy
    clip = emb["clip"]
    first = torch.zeros_like(clip, dtype=torch.bool)
    seen: set[int] = set()
    for i, c in enumerate(clip.tolist()):
        first[i] = c not in seen
        seen.add(c)
    return {k: v[first] for k, v in emb.items()}


def _affinity_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int, backend: str):
    from avfast.ops import affinity_topk  # the affinity op (avfast.ops.affinity)

    return affinity_topk(queries, gallery, k, metric="dot", backend=backend)


@torch.no_grad()
def sharded_retrieval(queries: torch.Tensor, query_ids: torch.Tensor, gallery: torch.Tensor,
                      gallery_ids: torch.Tensor, *, k: int = 10, chunk_size: int = 4096,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of each query's correct item in a gallery sharded across ranks.

    Args:
        queries: this rank's queries (Q_r, D), unit rows; ``query_ids`` (Q_r,) their clip ids.
        gallery: this rank's gallery shard (N_r, D); ``gallery_ids`` (N_r,). Every query's clip id
            must appear once in the union of the shards.
        k: length of the returned top-k lists.

    Returns (over all ranks' queries, identical on every rank): ``ranks`` (Q,) 1-based (ties in the
    correct item's favour) and ``topk_ids`` (Q, k) gallery clip ids, best first (-1 pads when the
    gallery has fewer than k items).
    """
    queries, query_ids = all_gather_cat(queries.float()), all_gather_cat(query_ids)
    gallery = gallery.float()
    # the correct item's score: computed where it lives, summed over ranks (0 elsewhere)
    if gallery_ids.numel():
        order = torch.argsort(gallery_ids)
        sorted_ids = gallery_ids[order]
        pos = torch.searchsorted(sorted_ids, query_ids).clamp_max(gallery_ids.numel() - 1)
        match = sorted_ids[pos] == query_ids
        positive = torch.where(match, (queries * gallery[order[pos]]).sum(-1), 0.0)
    else:
        match = torch.zeros_like(query_ids, dtype=torch.bool)
        positive = torch.zeros(query_ids.shape, dtype=queries.dtype, device=queries.device)
    owners = all_reduce_sum(match.long())
    if (owners != 1).any():
        bad = query_ids[owners != 1][:5].tolist()
        raise ValueError(f"every query's clip must be in the gallery exactly once; clip ids {bad} are not")
    positive = all_reduce_sum(positive)
    ranks, topk_ids = [], []
    local_k = min(k, gallery.shape[0])
    for lo in range(0, queries.shape[0], chunk_size):
        q = queries[lo:lo + chunk_size]
        count = (q @ gallery.T > positive[lo:lo + chunk_size, None]).sum(1) if gallery.numel() else \
            torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        ranks.append(all_reduce_sum(count) + 1)
        if local_k > 0:
            values, idx = _affinity_topk(q, gallery, local_k, backend)
            ids = gallery_ids[idx]
        else:
            values = q.new_empty(q.shape[0], 0)
            ids = query_ids.new_empty(q.shape[0], 0)
        pad = k - local_k
        values = F.pad(values, (0, pad), value=-math.inf)
        ids = F.pad(ids, (0, pad), value=-1)
        # merge every rank's top-k: gather along dim 1 (concatenate ranks' candidates per query)
        all_values = all_gather_cat(values.T.contiguous()).reshape(-1, k, q.shape[0]).permute(2, 0, 1).reshape(q.shape[0], -1)
        all_ids = all_gather_cat(ids.T.contiguous()).reshape(-1, k, q.shape[0]).permute(2, 0, 1).reshape(q.shape[0], -1)
        best = all_values.topk(k, dim=1).indices  # ties: stable order is rank-major, then local order
        topk_ids.append(torch.gather(all_ids, 1, best))
    return torch.cat(ranks), torch.cat(topk_ids)


def retrieval_metrics(embeddings: dict, ks=(1, 5, 10), *, chunk_size: int = 4096, backend: str = "auto") -> dict:
    """``{"video->audio": {...}, "audio->video": {...}}`` (or ``audio->dub`` for audio-only models).

    Each entry: R@k (percent, from the affinity top-k lists), median/mean rank, the number of queries
    and chance R@k. ``embeddings`` as returned by ``embed_clips`` on each rank.
    """
    k = max(ks)
    pairs = [("video->audio", "v", "a"), ("audio->video", "a", "v")] if "v" in embeddings else \
        [("audio->dub", "a", "a_s"), ("dub->audio", "a_s", "a")]
    clip = embeddings["clip"]
    gallery_size = int(all_reduce_sum(torch.tensor([clip.numel()])).item())
    out = {}
    for name, q, g in pairs:
        ranks, topk_ids = sharded_retrieval(embeddings[q], clip, embeddings[g], clip, k=k, chunk_size=chunk_size,
                                            backend=backend)
        query_ids = all_gather_cat(clip)
        summary = retrieval_summary(ranks, ks, gallery_size)
        for kk in ks:  # recall from the top-k lists of the affinity op
            summary[f"R@{kk}"] = 100.0 * float((topk_ids[:, :kk] == query_ids[:, None]).any(1).double().mean())
        out[name] = summary
    return out


def top1_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Percent of ``pred`` (N,) class ids equal to ``target`` (N,)."""
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"pred and target must be non-empty and of one shape ({tuple(pred.shape)}, {tuple(target.shape)})")
    return 100.0 * float((pred == target).double().mean())


def mean_per_class_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the classes present in ``target`` of each class's recall, in percent."""
    top1_accuracy(pred, target)  # same checks
    classes = target.unique()
    return 100.0 * float(torch.stack([(pred[target == c] == c).double().mean() for c in classes]).mean())


def _fit_probe(train_x, train_y, classes: int, *, hidden: tuple = (), lr: float, weight_decay: float = 0.0,
               epochs: int, optimizer: str = "sgd", batch_size: int = 0, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """A probe (linear when ``hidden`` is empty, else an MLP) trained with cross-entropy, cosine lr."""
    g = torch.Generator().manual_seed(seed)
    dims = [train_x.shape[1], *hidden]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(dims[-1], classes))
    probe = nn.Sequential(*layers)
    with torch.no_grad():
        for m in probe:
            if isinstance(m, nn.Linear):
                bound = (6.0 / (m.in_features + m.out_features)) ** 0.5 if hidden else 0.01 * 3 ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                m.bias.zero_()
    if optimizer == "sgd":
        opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_x.shape[0]
    bs = batch_size or n
    steps = epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g) if bs < n else torch.arange(n)
        for lo in range(0, n, bs):
            rows = order[lo:lo + bs]
            opt.zero_grad()
            F.cross_entropy(probe(train_x[rows]), train_y[rows]).backward()
            opt.step()
            sched.step()
    return probe.eval()


def _standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)
    return [(x - mean) / std for x in (train_x, *others)]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 epochs: int = 200, lr: float = 0.2, weight_decay: float = 0.0, seed: int = 0) -> dict:
    """Logistic regression on frozen embeddings: full-batch SGD (momentum 0.9), cosine schedule.

    ``train_x`` (N, D), ``train_y`` (N,) class ids; returns ``{"train_acc", "test_acc",
    "test_mean_per_class", "classes"}`` (percent). Features are standardised with the training set's statistics.
    """
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError("linear_probe needs at least one training and one test example")
    train_x, test_x = _standardise(train_x, test_x)
    classes = int(max(train_y.max(), test_y.max())) + 1
    probe = _fit_probe(train_x, train_y, classes, lr=lr, weight_decay=weight_decay, epochs=epochs, seed=seed)
    with torch.no_grad():
        pred_train, pred_test = probe(train_x).argmax(1), probe(test_x).argmax(1)
    return {"train_acc": top1_accuracy(pred_train, train_y), "test_acc": top1_accuracy(pred_test, test_y),
            "test_mean_per_class": mean_per_class_accuracy(pred_test, test_y), "classes": classes}


def mlp_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
              hidden: tuple = (1024,), lr: float = 1e-3, weight_decay: float = 0.0, epochs: int = 100,
              batch_size: int = 1024, dropout: float = 0.1, seed: int = 0) -> dict:
    """An MLP probe (hidden ReLU layers, dropout, AdamW, cosine lr) on frozen features; as ``linear_probe``."""
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError("mlp_probe needs at least one training and one test example")
    train_x, test_x = _standardise(train_x, test_x)
    classes = int(max(train_y.max(), test_y.max())) + 1
    probe = _fit_probe(train_x, train_y, classes, hidden=tuple(hidden), lr=lr, weight_decay=weight_decay,
                       epochs=epochs, optimizer="adamw", batch_size=batch_size, dropout=dropout, seed=seed)
    with torch.no_grad():
        pred_train, pred_test = probe(train_x).argmax(1), probe(test_x).argmax(1)
    return {"train_acc": top1_accuracy(pred_train, train_y), "test_acc": top1_accuracy(pred_test, test_y),
            "test_mean_per_class": mean_per_class_accuracy(pred_test, test_y), "classes": classes}


# HEAR-style grid (hear-eval-kit searches hidden layers, learning rate, initialisation); small for CPU
MLP_GRID = tuple({"hidden": h, "lr": lr} for h in ((1024,), (1024, 1024)) for lr in (1e-3, 3.2e-4, 1e-4))
LINEAR_GRID = tuple({"lr": lr, "weight_decay": wd} for lr in (0.2, 0.05) for wd in (0.0, 1e-3))


def carve_validation(train_ids: torch.Tensor, labels: torch.Tensor, fraction: float = 0.2,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split training positions into (fit, validation): ``fraction`` of each class (at least one
    when a class has two or more clips) goes to validation (when every class has a single clip, a
    random ``fraction`` of all). Returns index tensors into ``train_ids``."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1) ({fraction} given)")
    g = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in labels.unique():
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        k = int(round(fraction * len(rows))) if len(rows) > 1 else 0
        k = max(k, 1) if len(rows) > 1 else 0
        val.append(rows[:k])
        fit.append(rows[k:])
    fit_rows, val_rows = torch.cat(fit), torch.cat(val)
    if len(val_rows) == 0 and len(fit_rows) > 1:  # every class has one clip: a random share instead
        fit_rows = fit_rows[torch.randperm(len(fit_rows), generator=g)]
        k = min(len(fit_rows) - 1, max(1, int(round(fraction * len(fit_rows)))))
        fit_rows, val_rows = fit_rows[k:], fit_rows[:k]
    return fit_rows.sort().values, val_rows.sort().values


def probe_task(x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, train: torch.Tensor, test: torch.Tensor, *,
               val_fraction: float = 0.2, kinds=("linear", "mlp"), linear_grid=LINEAR_GRID, mlp_grid=MLP_GRID,
               linear_epochs: int = 200, mlp_epochs: int = 100, seed: int = 0) -> dict:
    """One probe task on frozen features with hyper-parameters selected on validation only.

    Args:
        x: (N, D) features; y: (N,) class ids; ids: (N,) clip ids.
        train, test: boolean masks (N,) of the task's training and test clips.
    The validation split is carved from ``train`` (``carve_validation``); each grid point is fitted
    on the rest and scored on validation (top-1); the best one (ties: first) is scored on test
    without refitting. Raises ``ValueError`` if training and test clip ids intersect.
    Returns ``{kind: {"test_acc", "test_mean_per_class", "val_acc", "params", "classes"}, "split": {...}}``.
    """
    train_rows, test_rows = torch.nonzero(train).flatten(), torch.nonzero(test).flatten()
    if set(ids[train_rows].tolist()) & set(ids[test_rows].tolist()):
        raise ValueError("probe training and test clips overlap (same clip ids on both sides)")
    if len(train_rows) < 2 or len(test_rows) == 0:
        raise ValueError(f"a probe needs >= 2 training and >= 1 test clips ({len(train_rows)}, {len(test_rows)} given)")
    fit_pos, val_pos = carve_validation(ids[train_rows], y[train_rows], val_fraction, seed)
    fit_rows, val_rows = train_rows[fit_pos], train_rows[val_pos]
    if len(val_rows) == 0:
        raise ValueError("no validation clips could be carved from the training split (one clip per class?)")
    fit_ids, val_ids = set(ids[fit_rows].tolist()), set(ids[val_rows].tolist())
    if fit_ids & val_ids:
        raise ValueError("a clip id appears twice in the probe's training split")
    xf, xv, xt = _standardise(x[fit_rows].float(), x[val_rows].float(), x[test_rows].float())
    yf, yv, yt = y[fit_rows], y[val_rows], y[test_rows]
    classes = int(y.max()) + 1
    out: dict = {"split": {"fit": len(fit_rows), "val": len(val_rows), "test": len(test_rows), "classes": classes}}
    settings = {"linear": (linear_grid, dict(epochs=linear_epochs)),
                "mlp": (mlp_grid, dict(epochs=mlp_epochs, optimizer="adamw", batch_size=1024, dropout=0.1))}
    for kind in kinds:
        if kind not in settings:
            raise ValueError(f"probe kinds are 'linear' and 'mlp' ({kind!r} given)")
        grid, fixed = settings[kind]
        best = None
        for params in track(grid, desc=f"{kind} probe grid", unit="fit"):
            probe = _fit_probe(xf, yf, classes, seed=seed, **fixed, **params)
            with torch.no_grad():
                val_acc = top1_accuracy(probe(xv).argmax(1), yv)
            if best is None or val_acc > best[0]:
                best = (val_acc, params, probe)
        val_acc, params, probe = best
        with torch.no_grad():
            pred = probe(xt).argmax(1)
        out[kind] = {"test_acc": top1_accuracy(pred, yt), "test_mean_per_class": mean_per_class_accuracy(pred, yt),
                     "val_acc": val_acc, "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
                     "classes": classes}
    return out


# ---- standard split files -----------------------------------------------------------------------

class ProbeSplit:
    """A task's labels and folds keyed by clip name (a file's stem, or a VGGSound ``<id>_<start>``).

    ``labels``: name -> class name; ``folds``: list of ``(train names, test names)``; the task's
    score is the mean over folds (ESC-50: 5 folds; UCF101 split 1 and VGGSound: one)."""

    def __init__(self, name: str, labels: dict, folds: list):
        self.name, self.labels, self.folds = name, labels, folds

    @staticmethod
    def key(clip) -> str:
        """The split's name of a manifest clip: ``labels["id"]`` if set, else the video file's stem."""
        from pathlib import Path

        return str(clip.labels["id"]) if clip.labels.get("id") is not None else Path(str(clip.video)).stem


def _esc50(path) -> ProbeSplit:
    import csv

    labels, fold = {}, {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "fold", "category"} <= set(rows[0]):
        raise ValueError(f"{path}: not ESC-50's meta/esc50.csv (needs filename, fold, category columns)")
    for r in rows:
        name = r["filename"].rsplit(".", 1)[0]
        labels[name], fold[name] = r["category"], int(r["fold"])
    folds = [({n for n in labels if fold[n] != k}, {n for n in labels if fold[n] == k}) for k in sorted(set(fold.values()))]
    return ProbeSplit("esc50", labels, folds)


def _ucf101(folder) -> ProbeSplit:
    from pathlib import Path

    folder = Path(folder)
    train_file, test_file = folder / "trainlist01.txt", folder / "testlist01.txt"
    for f in (train_file, test_file):
        if not f.exists():
            raise ValueError(f"{folder}: UCF101's split folder (ucfTrainTestlist) must hold {f.name}")

    def names(f):
        out = {}
        for line in f.read_text().split("\n"):
            if line.strip():
                rel = line.split()[0]
                out[Path(rel).stem] = rel.split("/")[0]  # the class is the folder
        return out

    train, test = names(train_file), names(test_file)
    return ProbeSplit("ucf101", {**train, **test}, [(set(train), set(test))])


def _vggsound(path) -> ProbeSplit:
    import csv

    labels, train, test = {}, set(), set()
    with open(path, newline="", encoding="utf-8") as f:
        for no, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4 or row[3].strip() not in ("train", "test"):
                raise ValueError(f"{path}:{no}: VGGSound rows are youtube_id,start_seconds,label,train|test")
            name = f"{row[0]}_{int(float(row[1])):06d}"
            labels[name] = row[2].strip()
            (test if row[3].strip() == "test" else train).add(name)
    return ProbeSplit("vggsound", labels, [(train, test)])


SPLIT_READERS = {"esc50": _esc50, "ucf101": _ucf101, "vggsound": _vggsound}


def read_split(spec: str) -> ProbeSplit:
    """``"esc50:meta/esc50.csv"`` | ``"ucf101:ucfTrainTestlist"`` (split 1) | ``"vggsound:vggsound.csv"``."""
    name, sep, path = spec.partition(":")
    if not sep or name not in SPLIT_READERS:
        raise ValueError(f"probe split {spec!r}: use one of {[f'{k}:PATH' for k in SPLIT_READERS]}")
    return SPLIT_READERS[name](path)
