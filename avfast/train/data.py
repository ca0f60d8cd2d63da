"""Data sources for the ``Trainer``: in-memory tensors, map-style datasets, and seed 001's manifests.

Every call into ``avfast.data`` lives in this file. A source yields the epoch's micro-batches from
any position, so a resumed run skips consumed batches at the index level (nothing is decoded twice).
Batches are dicts with ``avfast.data.QuadrupleDataset``'s keys: ``video``, ``video_s`` (B, 3, T, H, W),
``audio``, ``audio_s`` (B, 2, n_mels, frames), ``source`` (B,) int64, ``clip`` (B,) manifest index.
"""
from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["TensorSource", "DatasetSource", "training_source", "ManifestSource", "EvalClips", "dataset_variant", "mel_on_device"]


class TensorSource:
    """Shuffled batches of in-memory tensors, split across ranks.

    Args:
        tensors: name -> tensor ``(N, ...)``, all with the same ``N``.
        batch_size: global batch (all ranks together); each rank gets ``batch_size // world_size``
            consecutive rows of it, so N processes see exactly the one-process batch.
        seed: the shuffle of epoch ``e`` is ``randperm(N, generator=seed + e)``; ``shuffle=False``
            keeps the order.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tensors must share their first dimension; got {sizes}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        self.tensors, self.batch_size, self.seed, self.shuffle = tensors, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.n = next(iter(sizes.values()))
        self.steps_per_epoch = self.n // batch_size
        self.clips_per_batch = batch_size

    def batches(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        order = (torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                 if self.shuffle else torch.arange(self.n))
        local = self.batch_size // self.world_size
        for step in range(start, self.steps_per_epoch):
            rows = order[step * self.batch_size + self.rank * local:][:local]
            yield {k: v[rows] for k, v in self.tensors.items()}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "n": self.n, "batch_size": self.batch_size}


def dataset_variant(cfg) -> str:
    """``avfast.data`` variant spec for ``cfg.data`` (``variant`` + ``secondary_languages``)."""
    d = cfg.data
    if d.dataset_variant:
        return d.dataset_variant
    langs = ",".join(d.secondary_languages)
    if d.variant == "bilingual":
        if len(d.secondary_languages) != 1:
            raise ValueError("variant 'bilingual' needs exactly one data.secondary_languages entry "
                             f"({d.secondary_languages} given)")
        return f"bilingual:{langs}"
    if d.variant in ("multilingual", "audio_only") and langs:
        return f"{d.variant}:{langs}"
    return d.variant


def _data_config(cfg, **overrides):
    from avfast.data import DataConfig as _DatasetConfig

    d = cfg.data
    kwargs = dict(fps=d.fps, num_frames=d.num_frames, window=d.clip_seconds, short_side=tuple(d.short_side),
                  crop=d.crop_size, sample_rate=d.sample_rate, mel_preset=d.mel, **d.options)
    kwargs.update(overrides)
    return _DatasetConfig(**kwargs)


def mel_on_device(cfg) -> bool:
    """``train.mel_on_device``, resolved (null: True when CUDA is available)."""
    flag = getattr(cfg.train, "mel_on_device", None)
    return torch.cuda.is_available() if flag is None else bool(flag)


class ManifestSource:
    """Training batches of a manifest: ``QuadrupleDataset`` + ``SameSourceBatchSampler`` (per rank).

    ``batches(epoch, start)`` positions the sampler at batch ``start`` of ``epoch`` (its
    ``load_state_dict``), so a resumed run decodes only the batches it has not trained on.
    """

    def __init__(self, cfg, manifest: str, *, rank: int = 0, world_size: int = 1):
        from avfast.data import QuadrupleDataset, build_loader

        d = cfg.data
        wave = {"audio": "wave_masks"} if mel_on_device(cfg) and "audio" not in d.options else {}
        self.dataset = QuadrupleDataset(manifest, dataset_variant(cfg), _data_config(cfg, **wave), train=True,
                                        on_error=d.on_error, seed=cfg.train.seed, primary_language=d.primary_language)
        self.loader = build_loader(self.dataset, d.batch_size, same_source_fraction=d.same_source_fraction,
                                   same_source_count=d.same_source_count,
                                   seed=cfg.train.seed, num_replicas=world_size, rank=rank,
                                   num_workers=d.num_workers, persistent_workers=d.num_workers > 0)
        self.sampler = self.loader.batch_sampler
        self.world_size = world_size
        self.sampler.set_epoch(0)
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{manifest}: {len(self.dataset)} clips make no batch of {d.batch_size} per rank "
                             f"x {world_size} ranks; lower data.batch_size")
        self.clips_per_batch = d.batch_size * world_size
        self._epoch, self._start = 0, 0
        self._skipped = 0  # replaced bad clips in the batches trained on (counted here: workers' counters stay there)
        self.video_decoder = _video_decoder(self.dataset, train=True)

    def batches(self, epoch: int, start: int):
        self.sampler.set_epoch(epoch)
        state = self.sampler.state_dict(0)
        state["segments"] = [[self.world_size, self.loader.batch_sampler.sampler.batch_size, start]] if start else []
        self.sampler.load_state_dict(state)
        self._epoch, self._start = epoch, start
        for batch in self.loader:
            self._skipped += int(batch["skipped"].sum())
            yield batch if self.video_decoder is None else self.video_decoder(batch)

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "start": self._start, "num_clips": len(self.dataset),
                "skipped": self._skipped}


class EvalClips:
    """Deterministic (centre-crop, no-mask) clips of a manifest, this rank's share ``rank::world``.

    Each item holds ``video`` (unless audio-only), ``audio`` (primary track), ``audio_s`` for
    audio-only models (a dub, the retrieval target), ``clip`` (manifest index) and ``labels``.
    """

    def __init__(self, cfg, manifest: str, *, with_video: bool = True, with_secondary: bool = False,
                 max_clips: int = 0, rank: int = 0, world_size: int = 1):
        from avfast.data import QuadrupleDataset
        from avfast.data.quadruples import Variant

        variant = Variant("eval", secondary="dub" if with_secondary else "none", video=with_video)
        self.dataset = QuadrupleDataset(manifest, variant, _data_config(cfg), train=False,
                                        on_error=cfg.data.on_error, seed=cfg.train.seed,
                                        primary_language=cfg.data.primary_language)
        n = len(self.dataset) if not max_clips else min(max_clips, len(self.dataset))
        self.indices = list(range(rank, n, world_size))
        self.total = n

    def loader(self, batch_size: int, num_workers: int = 0):
        from torch.utils.data import DataLoader, Subset

        loader = DataLoader(Subset(self.dataset, self.indices), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=_collate_eval)
        decoder = _video_decoder(self.dataset, train=False)
        return loader if decoder is None else map(decoder, loader)

    def labels(self, key: str) -> list:
        """``clip.labels[key]`` of this rank's clips (lists become a sorted '+'-joined string)."""
        out = []
        for i in self.indices:
            value = self.dataset.clips[i].labels.get(key)
            out.append("+".join(sorted(map(str, value))) if isinstance(value, (list, tuple)) else value)
        return out


def _video_decoder(dataset, train: bool):
    """``reader: dali``: the batched GPU decoder of the workers' video specs (else None)."""
    if dataset.config.reader != "dali" or not dataset.variant.video:
        return None
    from avfast.data.dali_batch import BatchVideoDecoder

    return BatchVideoDecoder(dataset.config, train=train)


def _collate_eval(items: list[dict]) -> dict:
    from torch.utils.data import default_collate

    keys = [k for k in ("video", "audio", "audio_s", "clip") if k in items[0]]
    return default_collate([{k: it[k] for k in keys} for it in items])


class DatasetSource:
    """Shuffled batches of a map-style dataset (any family's items), split across ranks.

    Args:
        dataset: ``len(dataset)`` items; ``dataset[i]`` anything ``collate_fn`` batches.
        batch_size: global batch (all ranks together); each rank loads ``batch_size // world_size``
            consecutive indices of it, so N processes see exactly the one-process batch.
        collate_fn: default ``torch.utils.data.default_collate``.
        seed, shuffle: the order of epoch ``e`` is ``randperm(len, generator=seed + e)``.
        num_workers: DataLoader workers (``batches`` builds the loader from ``start``, so a resumed
            run loads only the batches it has not trained on).
    The tail that does not fill a global batch is dropped.
    """

    def __init__(self, dataset, batch_size: int, *, collate_fn=None, seed: int = 0, shuffle: bool = True,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be >= 1 and divisible by world_size {world_size}")
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.rank, self.world_size = rank, world_size
        self.n = len(dataset)
        self.steps_per_epoch = self.n // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.n} items make no batch of {batch_size}; lower the batch size")
        self.clips_per_batch = batch_size

    def _local_batches(self, epoch: int, start: int) -> list[list[int]]:
        order = (torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                 if self.shuffle else torch.arange(self.n))
        local = self.batch_size // self.world_size
        return [order[step * self.batch_size + self.rank * local:][:local].tolist()
                for step in range(start, self.steps_per_epoch)]

    def batches(self, epoch: int, start: int) -> Iterator:
        from torch.utils.data import DataLoader

        loader = DataLoader(self.dataset, batch_sampler=self._local_batches(epoch, start),
                            collate_fn=self.collate_fn, num_workers=self.num_workers)
        yield from loader

    def state_dict(self) -> dict:
        return {"seed": self.seed, "n": self.n, "batch_size": self.batch_size}


def training_source(data, cfg, info, collate_fn=None):
    """A family's training ``DataSource``: ``TensorSource`` for a dict of tensors (synthetic sets,
    feature files loaded whole), ``DatasetSource`` for a map-style dataset; batch size, seed and
    workers from ``cfg.data`` / ``cfg.train``, this rank's share from ``info``."""
    kwargs = dict(seed=cfg.train.seed, rank=info.rank, world_size=info.world_size)
    if isinstance(data, dict):
        return TensorSource(data, cfg.data.batch_size, **kwargs)
    return DatasetSource(data, cfg.data.batch_size, collate_fn=collate_fn, num_workers=cfg.data.num_workers, **kwargs)
