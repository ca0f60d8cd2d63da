"""``QuadrupleDataset`` and ``build_loader``: manifest -> decoded, augmented examples -> batches.

One example (dict) of ``QuadrupleDataset`` for the default multilingual variant::

    video    float (C, T, crop, crop)   primary window, normalised     (absent for audio_only)
    audio    float (C, n_mels, F)       primary track, log-mel + masks (or (C, N) wave: audio="wave")
    video_s  float (C, T, crop, crop)   secondary window               (absent for no_speech/audio_only)
    audio_s  float (C, n_mels, F)       secondary track (a dub when the shot has one; absent for no_speech)
    source   int    source (movie) id, as ``dataset.source_ids``
    clip     int    manifest index of the clip actually loaded
    lang, lang_s  str  language tags (lang_s "" when there is no secondary)
    skipped  int    bad clips replaced to produce this example (on_error="skip")

Randomness (windows, crops, flips, masks) is a function of (seed, epoch, clip, batch step), so
epochs are reproducible whatever the number of workers.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avfast.data.audio import load_audio
from avfast.data.errors import DataError
from avfast.data.manifest import Clip, read_manifest
from avfast.data.quadruples import Variant, Window, plan_quadruple
from avfast.data.sampler import SameSourceBatchSampler
from avfast.data.transforms import KINETICS_MEAN, KINETICS_STD, VideoAugment
from avfast.data.video import get_video_reader

__all__ = ["DataConfig", "QuadrupleDataset", "KeyedBatchSampler", "build_loader", "device_mel_masks"]

log = logging.getLogger("avfast.data")


@dataclass(frozen=True)
class DataConfig:
    """Decoding and augmentation settings; defaults are seed 001's (``DataConfig.demo()`` is small)."""

    fps: float = 25.0
    num_frames: int = 16
    window: float = 3.0  # seconds per window
    short_side: tuple[int, int] = (256, 320)
    crop: int = 224
    flip: bool = True
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    sample_rate: int = 48000
    channels: int = 2  # seed 001's audio model takes two channels (mono duplicated)
    # "mel" (ops.mel_spectrogram, preset below at sample_rate), "wave", or "wave_masks": the wave plus
    # the SpecAugment masks the mel path would draw (the mel is then computed on the training device)
    audio: str = "mel"
    mel_preset: str = "dub"  # built for sample_rate, window and hop kept in seconds (MelConfig.preset)
    masks: bool = True
    reader: str = "pyav"  # "dali": workers yield video specs, BatchVideoDecoder decodes each batch on the GPU
    decode_threads: int = 1
    prescale: bool = True  # let swscale scale frames down to short_side[1] while converting
    reader_kwargs: dict = field(default_factory=dict)

    @classmethod
    def demo(cls, **overrides) -> "DataConfig":
        """Small settings for CPU demos: 112 px crops of 8 frames from 1 s windows."""
        return replace(cls(num_frames=8, window=1.0, short_side=(128, 144), crop=112), **overrides)


def _key(key) -> tuple[int, int, int | None]:
    if isinstance(key, (tuple, list)):
        index, epoch, step = key
        return int(index), int(epoch), None if step is None else int(step)
    return int(key), 0, None


class QuadrupleDataset(Dataset):
    """Dub-augmented examples from a manifest (seed 001, section A).

    Args:
        manifest: path of a JSON-lines manifest or a list of ``Clip``.
        variant: ``"monolingual" | "bilingual:<lang>" | "multilingual[:l1,l2]" | "no_speech" |
            "audio_only[...]"`` (see ``avfast.data.quadruples``).
        config: ``DataConfig``.
        train: random windows/crops/flips/masks; False: centre crops, no flip, no masks.
        on_error: ``"raise"`` (a ``DataError`` naming the file and reason) or ``"skip"``: a bad clip
            is replaced by another (same source first, so same-source batches stay so), counted in
            ``skipped`` (per example and ``num_skipped`` per process), and logged once per file.
        seed: base seed of all randomness.
        primary_language: the primary track's language (seed 001 B.3: ``en``); every clip must have
            it; None: each clip's manifest ``primary``. Dubs are the other tracks.

    Items are indexed by ``int`` or by ``(index, epoch, step)`` keys (``KeyedBatchSampler`` makes
    them; the step drives the multilingual round-robin).
    """

    def __init__(self, manifest, variant: str | Variant = "multilingual", config: DataConfig | None = None, *,
                 train: bool = True, on_error: str = "raise", seed: int = 0, max_retries: int = 10,
                 primary_language: str | None = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip' ({on_error!r} given)")
        self.clips: list[Clip] = list(manifest) if not isinstance(manifest, (str, os.PathLike)) else read_manifest(manifest)
        self.variant = Variant.parse(variant)
        self.config = config or DataConfig()
        if self.config.audio not in ("mel", "wave", "wave_masks"):
            raise ValueError(f"config.audio must be 'mel', 'wave' or 'wave_masks' ({self.config.audio!r} given)")
        self.train = train
        self.on_error = on_error
        self.seed = seed
        self.max_retries = max_retries
        self.primary_language = primary_language
        if primary_language is not None and not self.variant.separated:
            lacking = sum(primary_language not in c.audio for c in self.clips)
            if lacking == len(self.clips):
                raise DataError(manifest if isinstance(manifest, (str, os.PathLike)) else "manifest",
                                f"no clip has a track in the primary language {primary_language!r} "
                                f"(data.primary_language); languages: {sorted({l for c in self.clips for l in c.audio})}")
        self.source_names = sorted({c.source for c in self.clips})
        code = {name: i for i, name in enumerate(self.source_names)}
        self.source_ids = [code[c.source] for c in self.clips]
        self._source_clips: list[list[int]] = [[] for _ in self.source_names]  # clip indices per source id
        for j, sid in enumerate(self.source_ids):
            self._source_clips[sid].append(j)
        self.languages = sorted({lang for c in self.clips for lang in c.languages})
        self.num_skipped = 0
        self._bad: set[int] = set()
        self._logged: set[str] = set()
        self._reader = None
        c = self.config
        self.video_transform = VideoAugment(short_side=c.short_side, crop=c.crop, flip=c.flip, mean=c.mean,
                                            std=c.std, train=train)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def reader(self):
        if self._reader is None:  # built lazily: in each DataLoader worker, after the fork
            kwargs = dict(self.config.reader_kwargs)
            if self.config.reader == "pyav":
                kwargs.setdefault("threads", self.config.decode_threads)
            self._reader = get_video_reader(self.config.reader, **kwargs)
        return self._reader

    def _video(self, clip: Clip, w: Window, gen: torch.Generator) -> torch.Tensor | dict:
        c = self.config
        if c.reader == "dali":  # a spec: decoded for the whole batch on the GPU (avfast.data.dali_batch)
            from avfast.data.dali_batch import video_spec

            return video_spec(clip.video, w.start, w.duration, c.num_frames, c.fps, self.video_transform, gen)
        extra = {"max_short_side": c.short_side[1]} if c.prescale and c.reader == "pyav" else {}
        frames = self.reader.read(clip.video, w.start, w.duration, num_frames=c.num_frames, fps=c.fps, **extra)
        return self.video_transform(frames, gen)

    def _audio(self, clip: Clip, w: Window, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        path, track = (clip.separated, None) if w.track == "separated" else clip.audio_source(w.track)
        wave = load_audio(path, c.sample_rate, w.start, w.duration, track=track, channels=c.channels)
        if c.audio == "wave":
            return wave
        if c.audio == "wave_masks":
            return wave, device_mel_masks(wave.shape[-1], self.mel_config(masks=c.masks and self.train), gen)
        from avfast import ops

        config = self.mel_config(masks=c.masks and self.train)
        return ops.mel_spectrogram(wave.unsqueeze(0), config, generator=gen)[0]  # clip's channels share masks

    def mel_config(self, masks: bool = False):
        """The ``MelConfig`` of ``config.mel_preset`` for ``config.sample_rate`` (e.g. 44.1 kHz for no_speech)."""
        from avfast.ops import MelConfig

        return MelConfig.preset(self.config.mel_preset, sample_rate=self.config.sample_rate, masks=masks)

    def load(self, index: int, epoch: int = 0, step: int | None = None) -> dict:
        """The example of clip ``index`` (raises ``DataError`` for a bad clip)."""
        clip = self.clips[index]
        rng = np.random.default_rng([self.seed, epoch, index, 0 if step is None else step + 1])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if not self.train:
            rng = np.random.default_rng([self.seed, index])  # fixed windows for evaluation
        plan = plan_quadruple(clip, self.variant, self.config.window, rng, step, primary=self.primary_language)
        out = {"source": self.source_ids[index], "clip": index, "lang": plan.primary.track,
               "lang_s": plan.secondary.track if plan.secondary else ""}
        if self.variant.video:
            out["video"] = self._video(clip, plan.primary, gen)
        self._put_audio(out, "audio", self._audio(clip, plan.primary, gen))
        if plan.secondary is not None:
            if self.variant.video:
                out["video_s"] = self._video(clip, plan.secondary, gen)
            self._put_audio(out, "audio_s", self._audio(clip, plan.secondary, gen))
        return out

    @staticmethod
    def _put_audio(out: dict, key: str, audio) -> None:
        if isinstance(audio, tuple):  # wave_masks: the wave and its masks (avfast.train.objective applies them)
            out[key], (out[key + "_freq_masks"], out[key + "_time_masks"]) = audio[0], audio[1]
        else:
            out[key] = audio

    def __getitem__(self, key) -> dict:
        index, epoch, step = _key(key)
        if self.on_error == "raise":
            return {**self.load(index, epoch, step), "skipped": 0}
        skipped = 0
        for attempt in range(self.max_retries + 1):
            i = index if attempt == 0 else self._replacement(index, epoch, attempt)
            if i in self._bad:
                skipped += 1
                continue
            try:
                return {**self.load(i, epoch, step), "skipped": skipped}
            except DataError as err:
                self._bad.add(i)
                skipped += 1
                self._report(err)
        raise DataError(self.clips[index].video, f"clip and {self.max_retries} replacements failed; see the log")

    def _replacement(self, index: int, epoch: int, attempt: int) -> int:
        rng = np.random.default_rng([self.seed, epoch, index, attempt, 0xBAD])
        same = [j for j in self._source_clips[self.source_ids[index]] if j != index and j not in self._bad]
        if same:
            return int(rng.choice(same))
        return int(rng.integers(len(self.clips)))

    def _report(self, err: DataError) -> None:
        self.num_skipped += 1
        if err.path not in self._logged:
            self._logged.add(err.path)
            log.warning("skipping a bad clip (%s); later errors of this file are not logged", err)


def device_mel_masks(length: int, config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The SpecAugment masks ``ops.mel_spectrogram(wave (1, C, length), config, generator=generator)``
    would draw (same generator draws): ``freq`` (freq_masks, 2) mel rows and ``time`` (time_masks, 2)
    frames, [start, end); empty when ``config.masks`` is off."""
    from avfast.ops._mel_masks import draw_masks  # the op's own drawing, so the draws match exactly

    if not config.masks:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long)
    if config.dither > 0:
        raise NotImplementedError("mel on the training device with dither: the op draws dither before the masks")
    frames = torch.tensor([min(config.frames(length), config.out_frames(length))])
    m = draw_masks(frames, config.n_mels, freq_masks=config.freq_masks, freq_mask_max=config.freq_mask_max,
                   time_masks=config.time_masks, time_mask_max=config.time_mask_max, generator=generator)
    return m.freq[0], m.time[0]


class KeyedBatchSampler:
    """Wraps ``SameSourceBatchSampler``: yields ``[(index, epoch, step), ...]`` keys for the dataset
    and forwards ``set_epoch``, ``state_dict(batches_done)``, ``load_state_dict``, ``len``."""

    def __init__(self, sampler: SameSourceBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        for step, batch in self.sampler.iter_with_steps():
            yield [(i, self.sampler.epoch, step) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self, batches_done: int | None = None) -> dict:
        return self.sampler.state_dict(batches_done)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def _worker_init(_):
    torch.set_num_threads(1)  # workers x decode threads, not workers x intra-op threads


def build_loader(dataset: QuadrupleDataset, batch_size: int, *, same_source_fraction: float = 0.125,
                 same_source_count: int | None = None, seed: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 num_workers: int | None = None, pin_memory: bool | None = None, prefetch_factor: int = 2,
                 persistent_workers: bool = True) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with same-source batches of ``batch_size`` (per rank):
    ``same_source_count`` clips of one source (or ``ceil(same_source_fraction * batch_size)``).

    World size and rank default to ``torch.distributed``'s when it is initialised; ``num_workers``
    to min(8, CPU count); pinned memory when CUDA is available. Use ``loader.batch_sampler`` for
    ``set_epoch(e)`` / ``state_dict(batches_done)`` / ``load_state_dict``.
    """
    import torch.distributed as dist

    if num_replicas is None or rank is None:
        ready = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
        rank = rank if rank is not None else (dist.get_rank() if ready else 0)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    sampler = SameSourceBatchSampler(dataset.source_ids, batch_size, same_source_fraction, seed=seed,
                                     num_replicas=num_replicas, rank=rank, same_source_count=same_source_count)
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers,
             "worker_init_fn": _worker_init} if num_workers > 0 else {}
    return DataLoader(dataset, batch_sampler=KeyedBatchSampler(sampler), num_workers=num_workers,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **extra)
