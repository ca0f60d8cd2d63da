"""Speech-free tracks for seed 001's no-speech (SEP) variant: ``avfast separate MANIFEST``.

Seed 001 B.3: "We use the pretrained Hybrid Demucs v3 model to separate the vocal from the rest,
mixing the other stems back together ... this variant is trained with 44.1kHz audio ... We use the
default (``mdx_extra_q``) pretrained model." ``separate_manifest`` runs a separator plug-in
(``avfast.data.dubbing.register_plugin("separator", ...)``; ``demucs`` built in) over every primary
track of a manifest once, writes ``<out>/<name>.sep.flac`` at 44.1 kHz (atomically: a temporary file
renamed into place, so an interrupted run leaves no half file), skips tracks already written
(resumable), and fills each clip's ``separated`` field in the manifest (rewritten atomically).

A separator is ``(wave float (C, N), sample_rate) -> background float (C, N)``.
``stems_background(model, wave, sample_rate)`` turns a Demucs-like model (``.samplerate``,
``.separate_tensor(x, rate) -> (mix, {stem: (C, N)})``) into one: resample to the model's rate,
pseudo-stereo in, every stem but ``vocals`` summed, back to the input's rate, channels and length.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from avfast.data.errors import DataError

__all__ = ["stems_background", "demucs_separator", "separate_manifest", "SEPARATION_RATE"]

SEPARATION_RATE = 44100  # Demucs' input and output rate; the SEP variant trains at it


def _resample(wave: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """``(C, N)`` at ``src`` Hz -> ``(C, round(N * dst / src))`` at ``dst`` Hz (band-limited)."""
    if src == dst:
        return wave
    try:
        import torchaudio

        return torchaudio.functional.resample(wave, src, dst)
    except ImportError:  # no torchaudio (demucs brings it): linear interpolation
        n = int(round(wave.shape[-1] * dst / src))
        return torch.nn.functional.interpolate(wave[None], size=n, mode="linear", align_corners=False)[0]


def stems_background(model, wave: np.ndarray, sample_rate: int, drop: str = "vocals") -> np.ndarray:
    """The sum of ``model``'s stems except ``drop``: float32 ``(C, N)`` like ``wave`` (C = 1 or 2)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 2 or wave.shape[0] not in (1, 2):
        raise ValueError(f"wave must be (1 or 2, N) ({wave.shape} given)")
    channels, n = wave.shape
    x = _resample(torch.from_numpy(wave), sample_rate, model.samplerate)
    if channels == 1:
        x = x.repeat(2, 1)  # the separation models are stereo
    _, stems = model.separate_tensor(x, model.samplerate)
    if drop not in stems:
        raise ValueError(f"the separator gives stems {sorted(stems)}, none named {drop!r}")
    kept = [v for k, v in stems.items() if k != drop]
    bg = sum(kept) if kept else torch.zeros_like(stems[drop])
    bg = _resample(bg.float().cpu(), model.samplerate, sample_rate)  # (2, ~N): time is the last axis
    if channels == 1:
        bg = bg.mean(0, keepdim=True)
    bg = bg[:, :n]
    if bg.shape[1] < n:
        bg = torch.nn.functional.pad(bg, (0, n - bg.shape[1]))
    return bg.numpy().astype(np.float32)


def demucs_separator(model: str = "mdx_extra_q", repo: str | os.PathLike | None = None, device: str = "cpu"):
    """Demucs (``pip install demucs``) as a separator; weights from the local folder ``repo`` (or
    ``$AVFAST_DEMUCS_REPO``) holding ``<model>.yaml`` and its checkpoints: nothing is downloaded."""
    try:
        import demucs.api as api
    except ImportError as exc:
        raise ImportError("the demucs separator needs `demucs.api`: pip install demucs (>= 4.1), with the "
                          f"{model} weights in a local folder (--repo)") from exc
    repo = repo or os.environ.get("AVFAST_DEMUCS_REPO")
    if not repo or not Path(repo).is_dir():
        raise FileNotFoundError(f"demucs model {model!r}: give the local folder of its weights (--repo / "
                                f"$AVFAST_DEMUCS_REPO; {repo!r} is not a folder); weights are never downloaded")
    sep = api.Separator(model=model, repo=Path(repo), device=device)

    def separate(wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return stems_background(sep, wave, sample_rate)

    return separate


def _name(clip, language: str) -> str:
    stem = Path(str(clip.video)).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{clip.source}__{stem}__{language}") + ".sep.flac"


def separate_manifest(manifest, *, separator: str = "demucs", out_dir=None, output=None,
                      sample_rate: int = SEPARATION_RATE, log=print, **options) -> dict:
    """Separate every clip's primary track (each file/track once); fill ``separated`` in the manifest.

    Args:
        manifest: JSON-lines manifest (``avfast.data.manifest``).
        separator: a registered separator plug-in (``demucs``) or a callable separator.
        out_dir: folder of the ``.sep.flac`` files (default ``<manifest folder>/separated``).
        output: manifest to write (default: ``manifest`` itself, rewritten atomically).
        options: passed to the plug-in's factory (demucs: ``model``, ``repo``, ``device``).
    Returns ``{"tracks", "written", "skipped", "clips", "manifest"}``.
    """
    from avfast.data.audio import load_audio, save_audio
    from avfast.data.dubbing import _plugin
    from avfast.data.manifest import read_manifest, write_manifest

    manifest = Path(manifest)
    root = manifest.resolve().parent
    raw = read_manifest(manifest, resolve=False)
    resolved = read_manifest(manifest)
    out_dir = Path(out_dir) if out_dir else root / "separated"
    out_dir.mkdir(parents=True, exist_ok=True)
    fn = None  # built on first use: a fully resumed run needs no separator installed
    done: dict[tuple, Path] = {}
    written = skipped = 0
    for clip, raw_clip in zip(resolved, raw):
        if clip.primary is None:
            raise DataError(manifest, f"clip of {clip.video} has no audio track to separate")
        path, track = clip.audio_source(clip.primary)
        key = (os.fspath(path), track)
        if key not in done:
            target = out_dir / _name(clip, clip.primary)
            if target.exists():
                skipped += 1
            else:
                if fn is None:
                    fn = separator if callable(separator) else _plugin("separator", separator, **options)
                wave = load_audio(path, sample_rate, track=track).numpy()
                bg = np.asarray(fn(wave, sample_rate), dtype=np.float32)
                if bg.shape != wave.shape or not np.isfinite(bg).all():
                    raise DataError(path, f"separator returned {bg.shape} (finite: {np.isfinite(bg).all()}) "
                                          f"for a {wave.shape} track")
                tmp = target.with_name(target.name[:-len(".flac")] + ".tmp.flac")
                save_audio(tmp, bg, sample_rate)
                os.replace(tmp, target)
                written += 1
                log(f"separated {path}{'' if track is None else f' track {track}'} -> {target}")
            done[key] = target
        target = done[key]
        try:
            raw_clip.separated = os.path.relpath(target, root)
        except ValueError:  # another drive
            raw_clip.separated = os.fspath(target.resolve())
    output = Path(output) if output else manifest
    write_manifest(output, raw)
    return {"tracks": len(done), "written": written, "skipped": skipped, "clips": len(raw), "manifest": str(output)}
