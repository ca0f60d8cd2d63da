"""``SameSourceBatchSampler``: batches where a fixed share of clips comes from one source (movie).

Seed 001 builds every minibatch so that 1/8 of it comes from one long-form source: hard negatives
for the contrastive loss; its controlled setup (B.3) instead gives a count, k = 12 of the 26 clips
per GPU. Here each rank's local batch of ``B`` clips holds exactly ``k`` clips of one source
(``same_source_count``, or ``ceil(fraction * B)``), drawn per (seed, epoch, rank, step) among the
sources that still have ``k`` unused clips (weighted by how many they have), and ``B - k`` clips
taken in a random order from the *other* sources, so the count is exact, not exact by chance. Our
reading of "k samples drawn from the same movie as the positive clip": the k clips include the
anchor, so each of them meets k - 1 same-movie negatives in its batch.

The epoch is one global plan that every rank computes identically from (seed, epoch): step by
step, rank by rank, clips are taken without replacement, so ranks are disjoint, no clip repeats in
an epoch (hence none in a batch), and the epoch ends for all ranks at the same step (when a rank
could not fill a whole batch or a source group), so every rank yields the same number of batches.

Resuming: ``state_dict()`` records the epoch and how many steps were taken at which world size and
batch size; ``load_state_dict`` replays those steps (which clips they used, not their order) and
continues with the remaining clips on the current world size, so a run may resume mid-epoch on a
different number of ranks (or batch size) without repeating or skipping clips.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

__all__ = ["SameSourceBatchSampler"]


class _EpochPool:
    """Unused clips of one epoch: a global random order plus the same order per source."""

    def __init__(self, source_codes: np.ndarray, num_sources: int, seed: int, epoch: int):
        self.order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(source_codes))
        self.used = np.zeros(len(source_codes), dtype=bool)
        self.cursor = 0
        codes_in_order = source_codes[self.order]
        by_source = np.argsort(codes_in_order, kind="stable")
        bounds = np.searchsorted(codes_in_order[by_source], np.arange(num_sources + 1))
        self.per_source = [self.order[by_source[bounds[s]:bounds[s + 1]]] for s in range(num_sources)]
        self.source_cursor = np.zeros(num_sources, dtype=np.int64)
        self.remaining = np.bincount(source_codes, minlength=num_sources).astype(np.int64)
        self.codes = source_codes
        self.left = len(source_codes)

    def _take_next(self, seq: np.ndarray, cursor: int, n: int, exclude: int | None = None) -> tuple[list[int], int]:
        """The next ``n`` unused clips of ``seq`` from ``cursor`` (vectorised scan), skipping source
        ``exclude``; marks them used. The returned cursor never passes an unused clip."""
        taken: list[np.ndarray] = []
        got = 0
        first_skipped = None  # position of the first unused clip passed over (of the excluded source)
        while got < n:
            chunk = seq[cursor: cursor + 2 * (n - got) + 8]
            if len(chunk) == 0:
                raise RuntimeError("SameSourceBatchSampler: ran out of clips (internal accounting error)")
            free_mask = ~self.used[chunk]
            ok = free_mask if exclude is None else free_mask & (self.codes[chunk] != exclude)
            free = chunk[ok]
            if len(free) >= n - got:
                free = free[: n - got]
                end = int(np.flatnonzero(chunk == free[-1])[0]) + 1
            else:
                end = len(chunk)
            if first_skipped is None and exclude is not None:
                skipped = np.flatnonzero((free_mask & ~ok)[:end])
                if len(skipped):
                    first_skipped = cursor + int(skipped[0])
            cursor += end
            taken.append(free)
            got += len(free)
            self.used[free] = True
        out = np.concatenate(taken) if taken else np.zeros(0, np.int64)
        np.subtract.at(self.remaining, self.codes[out], 1)
        self.left -= len(out)
        return out.tolist(), cursor if first_skipped is None else first_skipped

    def take_from_source(self, source: int, k: int) -> list[int]:
        out, self.source_cursor[source] = self._take_next(self.per_source[source], int(self.source_cursor[source]), k)
        return out

    def take_random(self, n: int, exclude: int | None = None) -> list[int]:
        out, self.cursor = self._take_next(self.order, self.cursor, n, exclude)
        return out


class SameSourceBatchSampler:
    """Batch sampler mixing a same-source group into every batch; distributed and resumable.

    Args:
        source_ids: source (movie) of each clip, any hashable values; ``len(source_ids)`` clips.
        batch_size: the local batch size of each rank.
        same_source_fraction: share of each local batch from one source; ``k = ceil(fraction *
            batch_size)`` clips (0 turns the grouping off). Paper: 1/8.
        same_source_count: exact ``k`` (overrides the fraction; seed 001's controlled setup: 12 of 26).
        seed: base seed; the plan is a function of (seed, epoch) only.
        num_replicas, rank: world size and this process's rank.

    Yields lists of ``batch_size`` clip indices; ``len(sampler)`` is the number of batches this rank
    yields in the current epoch (from the resume point). Call ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, source_ids: Sequence, batch_size: int, same_source_fraction: float = 0.125, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, *, same_source_count: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 ({batch_size} given)")
        if same_source_count is not None and not 0 <= same_source_count <= batch_size:
            raise ValueError(f"same_source_count must be in [0, batch_size={batch_size}] ({same_source_count} given)")
        if not 0.0 <= same_source_fraction <= 1.0:
            raise ValueError(f"same_source_fraction must be in [0, 1] ({same_source_fraction} given)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas) ({rank}, {num_replicas} given)")
        try:
            names, codes = np.unique(np.asarray(source_ids), return_inverse=True)
        except TypeError:  # mixed types: compare as strings
            names, codes = np.unique(np.asarray([str(s) for s in source_ids]), return_inverse=True)
        if len(codes) == 0:
            raise ValueError("source_ids is empty")
        self.source_codes = codes.astype(np.int64)
        self.num_sources = len(names)
        self.batch_size = batch_size
        self.fraction = same_source_fraction
        self.count = same_source_count
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._done: list[list[int]] = []  # [world_size, batch_size, steps] segments already taken this epoch
        self._base: list[list[int]] = []  # segments before the latest iteration began
        self._yielded = 0
        self._finished = False
        if self.group_size > self.source_codes.size:
            raise ValueError(f"a same-source group of {self.group_size} needs more clips than the {codes.size} given")

    @property
    def group_size(self) -> int:
        """Clips per local batch from the one drawn source: ``same_source_count`` or ``ceil(fraction * batch_size)``."""
        return self._group(self.batch_size)

    def _group(self, batch: int) -> int:
        if self.count is not None:
            return min(self.count, batch)
        return math.ceil(self.fraction * batch - 1e-9)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a resumed position in the same epoch is kept)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._done, self._base = [], []
            self._yielded = 0
            self._finished = False

    def _draw_source(self, pool: _EpochPool, k: int, step: int, rank: int) -> int | None:
        """A source with >= k unused clips, drawn with probability proportional to its unused clips."""
        rng = np.random.default_rng([self.seed, self.epoch, rank, step])
        for _ in range(16):  # the source of a random unused clip, if it is eligible (cheap while most are unused)
            clip = int(rng.integers(len(pool.used)))
            if not pool.used[clip] and pool.remaining[pool.codes[clip]] >= k:
                return int(pool.codes[clip])
        eligible = np.where(pool.remaining >= k, pool.remaining, 0)
        total = int(eligible.sum())
        if total == 0:
            return None
        return int(np.searchsorted(np.cumsum(eligible), rng.random() * total, side="right"))

    def _batch(self, pool: _EpochPool, world: int, batch: int, step: int, rank: int) -> list[int] | None:
        k = self._group(batch)
        if pool.left < batch:
            return None
        if k == 0:
            return pool.take_random(batch)
        source = self._draw_source(pool, k, step, rank)
        if source is None or pool.left - pool.remaining[source] < batch - k:
            return None  # no group left, or too few clips of other sources to fill the batch
        group = pool.take_from_source(source, k)
        return group + pool.take_random(batch - k, exclude=source)

    def _plan(self) -> list[list[int]]:
        """This rank's remaining batches of the current epoch (replaying the recorded segments)."""
        pool = _EpochPool(self.source_codes, self.num_sources, self.seed, self.epoch)
        step = 0
        for world, batch, steps in ([] if self._finished else self._done):
            for _ in range(steps):
                for r in range(world):
                    if self._batch(pool, world, batch, step, r) is None:
                        return []
                step += 1
        mine: list[list[int]] = []
        while True:
            row = [self._batch(pool, self.num_replicas, self.batch_size, step, r) for r in range(self.num_replicas)]
            if any(b is None for b in row):
                return mine
            mine.append(row[self.rank])
            step += 1

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.iter_with_steps():
            yield batch

    def iter_with_steps(self) -> Iterator[tuple[int, list[int]]]:
        """Like ``iter(sampler)`` but yields ``(step, batch)``: ``step`` counts the epoch's global
        steps (also those taken before a resume), e.g. for a per-batch language round-robin."""
        plan = self._plan()  # a finished epoch iterated again (no set_epoch) starts over
        self._done, self._finished = ([], False) if self._finished else (self._done, False)
        self._base = [list(seg) for seg in self._done]
        first = sum(seg[2] for seg in self._done)
        self._yielded = 0
        for batch in plan:
            self._yielded += 1
            yield first + self._yielded - 1, batch
        self._done = self._segments(self._yielded)
        self._finished = True

    def __len__(self) -> int:
        return len(self._plan())

    def _segments(self, batches_done: int) -> list[list[int]]:
        """Segments after ``batches_done`` batches of the latest iteration."""
        seg = [list(s) for s in self._base]
        if batches_done:
            seg.append([self.num_replicas, self.batch_size, int(batches_done)])
        return seg

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Position in the epoch. ``batches_done``: batches of the latest iteration actually
        consumed (pass it when a DataLoader prefetches ahead of the training loop); default: the
        batches yielded so far."""
        done = self._yielded if batches_done is None else batches_done
        return {"epoch": self.epoch, "seed": self.seed, "num_clips": int(self.source_codes.size),
                "segments": self._segments(done)}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position; world size, rank and batch size may differ from the saving run."""
        if state["num_clips"] != self.source_codes.size:
            raise ValueError(f"state is for {state['num_clips']} clips, this sampler has {self.source_codes.size}")
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self._done = [list(s) for s in state["segments"]]
        self._base = [list(s) for s in self._done]
        self._yielded = 0
        self._finished = False
