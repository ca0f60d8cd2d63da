"""Evaluation: cross-modal retrieval (R@k, median rank) and a linear probe on frozen embeddings.

Retrieval: every clip's video embedding queries the gallery of all clips' audio embeddings
(video->audio) and the other way round (audio->video); the clip's own pair is the one correct item.
The gallery stays sharded across ranks (each rank embeds ``rank::world`` of the clips and keeps
its share), queries stream past it in chunks: per chunk each rank takes its local top-k with
``avfast.ops.affinity_topk`` (the Q x N similarity matrix is never stored) and counts the gallery
items that beat the correct one; top-k lists are merged and counts summed across ranks. Memory per
rank: O(N / world x D + chunk x k). R@k comes from the merged top-k lists, ranks from the counts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avfast.metrics.retrieval import retrieval_summary
from avfast.train.distributed import all_gather_cat, all_reduce_sum, unwrap_model
from avfast.train.trainer import move_to_device

__all__ = ["embed_clips", "sharded_retrieval", "retrieval_metrics", "linear_probe"]


@torch.no_grad()
def embed_clips(model: nn.Module, loader, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
    """Embed a loader of eval batches: ``{"v", "a", "a_s" (those present): (N, D), "clip": (N,)}``."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    out: dict[str, list] = {}
    try:
        for batch in loader:
            batch = move_to_device(batch, device)
            inputs = {"video": batch.get("video"), "audio_p": batch.get("audio"), "audio_s": batch.get("audio_s")}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                z = model(**{k: v for k, v in inputs.items() if v is not None})
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


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 epochs: int = 200, lr: float = 0.2, weight_decay: float = 0.0, seed: int = 0) -> dict:
    """Logistic regression on frozen embeddings: full-batch SGD (momentum 0.9), cosine schedule.

    ``train_x`` (N, D), ``train_y`` (N,) class ids; returns ``{"train_acc", "test_acc", "classes"}``
    (accuracies in percent). Features are standardised with the training set's statistics.
    """
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError("linear_probe needs at least one training and one test example")
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=g) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        acc = lambda x, y: 100.0 * float((probe(x).argmax(1) == y).double().mean())  # noqa: E731
        return {"train_acc": acc(train_x, train_y), "test_acc": acc(test_x, test_y), "classes": classes}
