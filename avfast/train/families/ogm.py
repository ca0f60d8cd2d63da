"""Family ``ogm``: a two-encoder audio-visual classifier trained with or without OGM-GE (seed 003).

    avfast ogm train --config configs/ogm/concat_ogm_ge.yaml --out runs/ogm [--set data.root=DATA]
    avfast ogm eval --checkpoint runs/ogm --split test

Data: ``data.root`` holds a labelled manifest::

    root/manifest.csv            # header id,label,split (split: train | val | test)
    root/audio/<id>.npy          # (F, T) spectrogram (one channel)
    root/visual/<id>.npy         # (3, H, W) frame or (S, 3, H, W) frames

``root`` empty: ``SyntheticImbalanced`` clips where the audio is the easy, dominant modality.
Evaluation reports the fused accuracy and each modality's accuracy from its contribution to the
logits (argmax of out_a / out_v): the imbalance OGM-GE exists to reduce.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avfast.data.errors import DataError
from avfast.models.fusion import TwoEncoderConfig
from avfast.train.family import Family

__all__ = ["FAMILY", "OGMDataConfig", "OGMLossConfig", "OGMEvalConfig", "SyntheticImbalanced", "ManifestClips",
           "modality_accuracy", "add_parser"]

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


@dataclasses.dataclass
class OGMDataConfig:
    root: str = ""                   # labelled manifest root; empty: synthetic clips
    batch_size: int = 64             # the public code's
    num_workers: int = 0
    synthetic_clips: int = 1024      # training clips (val / test: a quarter)
    synthetic_size: int = 32         # synthetic spectrograms and frames are size x size
    audio_strength: float = 1.0      # class signal in the synthetic audio (dominant)
    visual_strength: float = 0.35    # class signal in the synthetic frames (weak)


@dataclasses.dataclass
class OGMLossConfig:
    """The gradient modulation (``avfast.train.ogm_ge.OGMGEConfig``): modulation none | ogm | ogm_ge."""

    modulation: str = "ogm_ge"
    alpha: float = 0.5
    form: str = "tanh"               # tanh (seed, public code) | paper (relu(rho - 1))
    start_epoch: int = 0
    end_epoch: int = 50
    conv_only: bool = True


@dataclasses.dataclass
class OGMEvalConfig:
    batch_size: int = 256


class SyntheticImbalanced:
    """Clips of ``classes`` classes: audio (1, S, S) = a * pattern_a[y] + noise, visual (3, S, S) =
    b * pattern_v[y] + noise with a > b, so the audio encoder learns first and dominates."""

    def __init__(self, classes: int = 6, size: int = 32, audio_strength: float = 1.0, visual_strength: float = 0.35,
                 seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.classes, self.size = classes, size
        self.audio_strength, self.visual_strength = audio_strength, visual_strength
        smooth = lambda x: F.avg_pool2d(x, 5, 1, 2)  # noqa: E731  (blobs, not pixel noise)
        self.pattern_a = smooth(torch.randn(classes, 1, size, size, generator=g)).sign()
        self.pattern_v = smooth(torch.randn(classes, 3, size, size, generator=g)).sign()

    def tensors(self, n: int, *, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, self.classes, (n,), generator=g)
        audio = self.audio_strength * self.pattern_a[y] + torch.randn(n, 1, self.size, self.size, generator=g)
        visual = self.visual_strength * self.pattern_v[y] + torch.randn(n, 3, self.size, self.size, generator=g)
        return {"audio": audio, "visual": visual, "label": y}


class ManifestClips(torch.utils.data.Dataset):
    """The clips of one split of a labelled manifest: {"audio" (1, F, T), "visual", "label"}."""

    def __init__(self, root, split: str):
        self.root = Path(root)
        path = self.root / "manifest.csv"
        if not path.is_file():
            raise DataError(path, "manifest not found (columns id,label,split)")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"id", "label", "split"} <= set(rows[0]):
            raise DataError(path, f"columns must include id,label,split, got {sorted(rows[0])}")
        self.labels = sorted({r["label"] for r in rows})
        self.rows = [r for r in rows if r["split"] == split]
        if not self.rows:
            raise DataError(path, f"no clip in split {split!r}")

    def __len__(self):
        return len(self.rows)

    def _load(self, kind: str, uid: str, dims: tuple) -> torch.Tensor:
        path = self.root / kind / f"{uid}.npy"
        if not path.is_file():
            raise DataError(path, f"{kind} file not found")
        x = np.load(path)
        if x.ndim not in dims:
            raise DataError(path, f"expected {' or '.join(f'{d}-D' for d in dims)} {kind}, got shape {x.shape}")
        return torch.from_numpy(np.asarray(x, dtype=np.float32))

    def __getitem__(self, i):
        r = self.rows[i]
        return {"audio": self._load("audio", r["id"], (2,))[None], "visual": self._load("visual", r["id"], (3, 4)),
                "label": torch.tensor(self.labels.index(r["label"]))}


def modality_accuracy(out, labels: torch.Tensor) -> dict:
    """Fused, audio-only and visual-only accuracy (%) from a ``FusionOutput`` and labels (B,)."""
    acc = lambda logits: float((logits.argmax(-1) == labels).double().mean() * 100)  # noqa: E731
    return {"acc": acc(out.logits), "acc_audio": acc(out.out_a), "acc_visual": acc(out.out_v)}


def _build_model(cfg):
    from avfast.models.fusion import TwoEncoderClassifier

    return TwoEncoderClassifier(cfg.model)


def _objective(model, batch):
    out = model(batch["audio"], batch["visual"])
    loss = F.cross_entropy(out.logits, batch["label"])
    return loss, {"ce": loss.detach()}, {"out_a": out.out_a, "out_v": out.out_v, "labels": batch["label"]}


def _build_objective(cfg, model):
    return _objective


def _build_hooks(cfg):
    from avfast.train.ogm_ge import OGMGE, OGMGEConfig

    m = cfg.loss
    return [OGMGE(OGMGEConfig(enabled=m.modulation != "none", alpha=m.alpha, form=m.form, ge=m.modulation == "ogm_ge",
                              start_epoch=m.start_epoch, end_epoch=m.end_epoch, conv_only=m.conv_only))]


def _validate(cfg) -> None:
    from avfast.train.config import ConfigError

    if cfg.loss.modulation not in ("none", "ogm", "ogm_ge"):
        raise ConfigError(f"loss.modulation must be none|ogm|ogm_ge, got {cfg.loss.modulation!r}")
    if cfg.loss.alpha <= 0 or cfg.loss.form not in ("tanh", "paper"):
        raise ConfigError("loss.alpha must be > 0 and loss.form tanh|paper")
    if cfg.loss.end_epoch < cfg.loss.start_epoch:
        raise ConfigError("loss.end_epoch must be >= loss.start_epoch")
    if not cfg.data.root and cfg.model.audio_channels != 1:
        raise ConfigError("synthetic clips have one audio channel: model.audio_channels must be 1")


def _dataset(cfg, split):
    d = cfg.data
    if d.root:
        return ManifestClips(d.root, split)
    gen = SyntheticImbalanced(cfg.model.classes, d.synthetic_size, d.audio_strength, d.visual_strength,
                              seed=cfg.train.seed)
    n = d.synthetic_clips if split == "train" else max(d.synthetic_clips // 4, 1)
    return gen.tensors(n, seed=cfg.train.seed * 10 + SPLIT_SEEDS[split])


def _build_data(cfg, split, info):
    from avfast.train.data import training_source

    return training_source(_dataset(cfg, split), cfg, info)


def _evaluate(cfg, model, split, info):
    from avfast.train.families.avqa import split_batches

    device = next(model.parameters()).device
    outs, labels = [], []
    for batch in split_batches(_dataset(cfg, split), cfg.eval.batch_size, cfg.data.num_workers):
        out = model(batch["audio"].to(device), batch["visual"].to(device))
        outs.append([t.cpu() for t in out])
        labels.append(batch["label"])
    from avfast.models.fusion import FusionOutput

    out = FusionOutput(*(torch.cat(parts) for parts in zip(*outs)))
    results = modality_accuracy(out, torch.cat(labels))
    results["gap"] = abs(results["acc_audio"] - results["acc_visual"])
    return results


FAMILY = Family(
    name="ogm", model=TwoEncoderConfig, data=OGMDataConfig, loss=OGMLossConfig, eval=OGMEvalConfig,
    build_model=_build_model, build_objective=_build_objective, build_data=_build_data, validate=_validate,
    build_hooks=_build_hooks, evaluate=_evaluate,
    # the public OGM-GE code: SGD lr 1e-3, momentum 0.9, wd 1e-4, StepLR(70, 0.1), batch 64, 100 epochs
    defaults={"name": "ogm_ge", "optim": {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                                          "schedule": "step", "step_size": 70.0, "gamma": 0.1, "epochs": 100.0,
                                          "warmup_epochs": 0.0},
              "train": {"early_stopping_metric": "acc", "early_stopping_mode": "max"}},
)


def add_parser(sub) -> None:
    """``avfast ogm train|eval``."""
    from avfast.train.run import add_family_commands

    add_family_commands(sub, "ogm", "ogm", "two-encoder classifier with OGM-GE gradient modulation (seed 003): "
                                           "train | eval")
