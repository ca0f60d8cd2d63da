"""Batched video decoding on the training device (the design's GPU data path) for ``reader="dali"``.

With ``DataConfig(reader="dali")`` the DataLoader workers do not decode video: each example's
``video`` / ``video_s`` entry is a *clip spec* (``VideoSpec``: file, start, duration, and the state of
the example's generator at the point the video augmentation draws its numbers), checked in the
worker (file readable, window inside the video: a bad clip is a ``DataError`` there, so
``on_error="skip"`` replaces it as for decoded clips); the audio is decoded and turned into mel in
the worker as usual. In the training process ``BatchVideoDecoder`` turns the batch's specs into
video: one ``DaliVideoReader.read_batch`` call decodes every clip of the batch on the GPU (NVDEC),
then ``VideoAugment`` (crop, resize, flip, normalise) runs on the device with the replayed generator,
so the result equals what the worker path (``reader="pyav"``) computes for the same seed, up to the
decoders' pixel differences.

Collated specs are a dict of lists/tensors (``default_collate`` of ``VideoSpec.as_dict``):
``path`` list[str], ``start`` / ``duration`` (B,) float64, ``rng`` (B, S) uint8 generator states.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from avfast.data.errors import DataError
from avfast.data.transforms import VideoAugment, _rand

__all__ = ["VideoSpec", "video_spec", "BatchVideoDecoder", "is_spec_batch", "skip_augment_draws"]


@dataclass(frozen=True)
class VideoSpec:
    """One clip's video to decode later: ``[start, start + duration)`` of ``path`` and ``rng``, the
    example generator's state where the video augmentation starts drawing."""

    path: str
    start: float
    duration: float
    rng: torch.Tensor

    def as_dict(self) -> dict:
        return {"path": self.path, "start": float(self.start), "duration": float(self.duration), "rng": self.rng}


def skip_augment_draws(augment: VideoAugment, generator: torch.Generator) -> None:
    """Advance ``generator`` past the numbers ``augment`` draws for one clip (scale, top, left, flip
    when training), so the worker's later draws (audio masks) match the decoding path."""
    draws = (3 + int(augment.flip)) if augment.train else 0
    for _ in range(draws):
        _rand(generator)


def video_spec(path, start: float, duration: float, num_frames: int, fps: float, augment: VideoAugment,
               generator: torch.Generator) -> dict:
    """The spec of one window (checked now: ``DataError`` for a missing/corrupt file or a window past
    the video's end); advances ``generator`` as the augmentation would."""
    from avfast.data.video import _check_interval, probe_video

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "video file does not exist")
    info = probe_video(path)  # demux only: raises DataError for unreadable files
    _check_interval(path, start, duration, info["duration"], fps)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 ({num_frames} given)")
    spec = VideoSpec(path, float(start), float(duration), generator.get_state())
    skip_augment_draws(augment, generator)
    return spec.as_dict()


def is_spec_batch(entry) -> bool:
    """True for a collated spec entry (what ``BatchVideoDecoder`` replaces)."""
    return isinstance(entry, dict) and {"path", "start", "duration", "rng"} <= set(entry)


class BatchVideoDecoder:
    """Replace a batch's video specs by decoded, augmented video on ``device``.

    Args:
        config: the dataset's ``avfast.data.DataConfig`` (frames, fps, augmentation).
        train: the dataset's mode (random or centre crops).
        reader: a video reader with ``read_batch(list of dict)`` (``DaliVideoReader``, the default on
            CUDA) or ``read(path, start, duration, num_frames, fps)`` (e.g. ``PyAVVideoReader``, for
            CPU tests and debugging).
    ``decoder(batch)`` returns the batch with ``video`` / ``video_s`` as float (B, 3, T, crop, crop).
    """

    def __init__(self, config, *, train: bool = True, reader=None, device: torch.device | str | None = None):
        c = config
        self.config = c
        self.augment = VideoAugment(short_side=c.short_side, crop=c.crop, flip=c.flip, mean=c.mean, std=c.std,
                                    train=train)
        if reader is None:
            from avfast.data.video import get_video_reader

            reader = get_video_reader("dali", **dict(c.reader_kwargs))
        self.reader = reader
        self.device = torch.device(device) if device is not None else None

    def _frames(self, specs: dict) -> list[torch.Tensor]:
        c = self.config
        clips = [dict(path=p, start=float(s), duration=float(d), num_frames=c.num_frames, fps=c.fps)
                 for p, s, d in zip(specs["path"], specs["start"].tolist(), specs["duration"].tolist())]
        if hasattr(self.reader, "read_batch"):
            return self.reader.read_batch(clips)  # one pipeline run for the whole batch
        extra = {"max_short_side": c.short_side[1]} if c.prescale else {}  # as the worker path's PyAV pre-scale
        return [self.reader.read(**clip, **extra) for clip in clips]

    def decode(self, specs: dict) -> torch.Tensor:
        """Collated specs -> float (B, 3, T, crop, crop) on the frames' device (or ``device``)."""
        frames = self._frames(specs)
        out = []
        for clip, state in zip(frames, specs["rng"]):
            if self.device is not None:
                clip = clip.to(self.device, non_blocking=True)
            gen = torch.Generator()
            gen.set_state(state.to("cpu", torch.uint8).clone())  # a fresh tensor: set_state ignores storage offsets
            out.append(self.augment(clip, gen))
        return torch.stack(out)

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        for key in ("video", "video_s"):
            if key in batch and is_spec_batch(batch[key]):
                out[key] = self.decode(batch[key])
        return out
