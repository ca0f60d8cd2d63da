"""SameSourceBatchSampler: fraction, no duplicates, determinism, ranks, resume (also on another world size)."""
import math
from collections import Counter

import numpy as np
import pytest

from avfast.data import SameSourceBatchSampler


def _sources(n_sources=12, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 40, n_sources)
    return [f"movie{s}" for s, n in enumerate(sizes) for _ in range(n)]


SRC = _sources()


def _epoch(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("batch,fraction", [(8, 0.125), (16, 0.125), (10, 0.3), (7, 1.0), (8, 0.0)])
def test_fraction_and_no_duplicates(batch, fraction):
    sampler = SameSourceBatchSampler(SRC, batch, same_source_fraction=fraction, seed=1)
    k = math.ceil(fraction * batch - 1e-9)
    batches = _epoch(sampler)
    assert len(batches) == len(sampler) > 0
    seen = set()
    for b in batches:
        assert len(b) == batch and len(set(b)) == batch
        assert max(Counter(SRC[i] for i in b).values()) >= k
        if k:
            assert len({SRC[i] for i in b[:k]}) == 1  # the group comes first
        assert not seen & set(b)
        seen |= set(b)
    assert len(seen) > len(SRC) - 2 * batch - max(Counter(SRC).values())  # little is dropped


def test_group_source_varies_and_rest_is_random():
    sampler = SameSourceBatchSampler(SRC, 16, same_source_fraction=0.25, seed=0)
    batches = _epoch(sampler)
    assert len({SRC[b[0]] for b in batches}) > 4
    rest_sources = Counter(SRC[i] for b in batches for i in b[4:])
    assert len(rest_sources) == len(set(SRC))


def test_deterministic_and_epoch_dependent():
    a = _epoch(SameSourceBatchSampler(SRC, 8, seed=5), epoch=2)
    b = _epoch(SameSourceBatchSampler(SRC, 8, seed=5), epoch=2)
    c = _epoch(SameSourceBatchSampler(SRC, 8, seed=5), epoch=3)
    d = _epoch(SameSourceBatchSampler(SRC, 8, seed=6), epoch=2)
    assert a == b and a != c and a != d


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_disjoint_same_length(world):
    per_rank = [_epoch(SameSourceBatchSampler(SRC, 8, seed=0, num_replicas=world, rank=r), 1) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) > 0
    clips = [i for batches in per_rank for b in batches for i in b]
    assert len(clips) == len(set(clips))
    for batches in per_rank:
        for b in batches:
            assert len({SRC[i] for i in b[:1]}) == 1


def _consume(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_resume_mid_epoch_same_world():
    full = _epoch(SameSourceBatchSampler(SRC, 8, seed=3), 4)
    first = SameSourceBatchSampler(SRC, 8, seed=3)
    first.set_epoch(4)
    head = _consume(first, 5)
    state = first.state_dict()
    resumed = SameSourceBatchSampler(SRC, 8, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)
    assert len(resumed) == len(full) - 5
    assert head + list(resumed) == full
    # a DataLoader that prefetched further: the trainer says how many batches it really used
    assert first.state_dict(batches_done=3)["segments"] == [[1, 8, 3]]
    # after a finished epoch, the next set_epoch starts fresh; resuming at the very end yields nothing
    end = SameSourceBatchSampler(SRC, 8, seed=3)
    end.load_state_dict(resumed.state_dict())
    assert list(end) == []


@pytest.mark.parametrize("old_world,new_world", [(2, 3), (4, 1), (1, 2)])
def test_resume_on_a_different_world_size(old_world, new_world):
    old = [SameSourceBatchSampler(SRC, 8, seed=9, num_replicas=old_world, rank=r) for r in range(old_world)]
    used = []
    for s in old:
        s.set_epoch(1)
        used += [i for b in _consume(s, 4) for i in b]
    state = old[0].state_dict()
    assert all(s.state_dict() == state for s in old)
    new = [SameSourceBatchSampler(SRC, 8, seed=9, num_replicas=new_world, rank=r) for r in range(new_world)]
    rest = []
    for s in new:
        s.load_state_dict(state)
        s.set_epoch(1)
        rest.append(list(s))
    assert len({len(r) for r in rest}) == 1 and len(rest[0]) > 0
    later = [i for r in rest for b in r for i in b]
    assert len(later) == len(set(later)) and not set(later) & set(used)  # nothing repeats, nothing is lost twice
    assert len(used) + len(later) > len(SRC) - 8 * (new_world + 1) - 40


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        SameSourceBatchSampler(SRC, 0)
    with pytest.raises(ValueError, match="rank"):
        SameSourceBatchSampler(SRC, 8, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="fraction"):
        SameSourceBatchSampler(SRC, 8, same_source_fraction=1.5)
    s = SameSourceBatchSampler(SRC, 8)
    with pytest.raises(ValueError, match="clips"):
        s.load_state_dict({"epoch": 0, "seed": 0, "num_clips": 3, "segments": []})


def test_controlled_count_is_exact():
    """Seed 001 B.3: 12 clips of one movie in every batch of 26; the fill never adds a 13th."""
    rng = np.random.default_rng(3)
    src = [f"m{s}" for s in range(40) for _ in range(int(rng.integers(20, 60)))]
    sampler = SameSourceBatchSampler(src, 26, same_source_count=12, seed=0)
    assert sampler.group_size == 12
    batches = _epoch(sampler)
    assert len(batches) > 20
    for b in batches:
        counts = Counter(src[i] for i in b)
        assert counts[src[b[0]]] == 12 and len(set(b)) == 26
    # the fraction that gave 13 before (ceil(0.4616 * 26)) is no longer needed
    assert SameSourceBatchSampler(src, 26, same_source_fraction=0.4616).group_size == 13


def test_fill_excludes_group_source_with_few_sources():
    src = ["a"] * 30 + ["b"] * 30 + ["c"] * 30
    sampler = SameSourceBatchSampler(src, 9, same_source_count=3, seed=1)
    batches = _epoch(sampler)
    assert batches
    for b in batches:
        assert Counter(src[i] for i in b)[src[b[0]]] == 3
    with pytest.raises(ValueError, match="same_source_count"):
        SameSourceBatchSampler(src, 9, same_source_count=10)
