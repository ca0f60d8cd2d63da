"""Run configuration: dataclasses, YAML/TOML/JSON files, ``--set a.b=c`` overrides.

A config belongs to one model family (top-level ``family:``, default ``dub``, seed 001): the family
(``avfast.train.family``) declares the dataclasses of its ``model``, ``data``, ``loss`` and ``eval``
sections and may change the defaults of the shared ``optim`` and ``train`` sections to its paper's.
A file holds any subset of the keys; missing keys keep their defaults. ``base: other.yaml`` (path
relative to the file) inherits another file first. Unknown keys are errors that name the key, so a
typo never silently trains the wrong thing.

>>> cfg = load_config("configs/demo.yaml", ["optim.lr=1e-3", "data.batch_size=8"])
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Config", "ModelConfig", "DataConfig", "LossConfig", "OptimConfig", "TrainConfig", "EvalConfig",
           "VARIANTS", "OPTIMIZERS", "SCHEDULES", "load_config", "apply_overrides", "config_to_dict",
           "config_from_dict", "ConfigError", "check_choices", "check_ranges"]

# seed 001's pretraining variants (supplementary B.3)
VARIANTS = ("monolingual", "bilingual", "multilingual", "no_speech", "audio_only")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "multistep", "constant", "plateau")


class ConfigError(ValueError):
    """A configuration file or override is invalid (the message names the key)."""


@dataclass
class ModelConfig:
    video: str | None = "x3d_m"  # None (or "none") for the audio-only variant
    audio: str = "acoustic_resnet50"
    # seed 001 B.3: one audio backbone for primary and dubbed audio, separate heads ("backbone");
    # "all": backbone and head shared; "none": two audio towers (model.shared_audio false, before)
    audio_sharing: str = "backbone"
    embed_dim: int = 512
    head_hidden: int | None = None
    norm: str = "batch"  # "group": independent of how the batch is split across processes
    video_kwargs: dict = field(default_factory=lambda: {"feature_dim": 1024})
    audio_kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    manifest: str | None = None
    eval_manifest: str | None = None  # default: the training manifest, without augmentation
    probe_manifest: str | None = None  # labelled clips for the linear probe
    variant: str = "multilingual"
    primary_language: str = "en"
    secondary_languages: list = field(default_factory=list)  # empty: every other track
    batch_size: int = 64  # per process
    same_source_fraction: float = 0.125  # ceil(fraction * batch_size) clips of one movie per batch
    same_source_count: int | None = None  # exact clips of one movie per batch (overrides the fraction)
    num_workers: int = 8
    clip_seconds: float = 3.0
    num_frames: int = 16
    fps: float = 25.0
    crop_size: int = 224
    short_side: tuple = (256, 320)
    sample_rate: int = 48000
    mel: str = "dub"
    dataset_variant: str | None = None  # exact avfast.data variant spec, e.g. "audio_only:monolingual"
    on_error: str = "skip"  # a bad clip: "skip" (replaced, counted, logged) or "raise"
    options: dict = field(default_factory=dict)  # further avfast.data.DataConfig fields (flip, reader, ...)


@dataclass
class LossConfig:
    tau: float = 0.07
    lambda_v: float = 1.0  # weight of NCE(v_s, a_s)
    lambda_a: float = 0.0  # weight of NCE(a_p, a_s) (cross-modal training: 0)
    source_weight: float = 1.0  # > 1 up-weights same-source negatives; 1 = plain InfoNCE
    gather: str = "all_gather"  # negatives across ranks: none | all_gather | ring
    backend: str = "auto"


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 3e-4
    weight_decay: float = 5e-2
    decay_1d: bool = False  # weight decay on biases and norm scales too (the public SGD codes do)
    betas: tuple = (0.9, 0.999)  # adam / adamw
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    epochs: float = 12.0
    schedule: str = "cosine"  # cosine (half-cosine to min_lr_ratio) | step | multistep | constant | plateau
    warmup_epochs: float = 2.0  # linear warm-up before any schedule
    min_lr_ratio: float = 0.0  # cosine: final lr / lr
    step_size: float = 0.0  # step: epochs between decays
    milestones: list = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1  # step / multistep / plateau decay factor
    plateau_patience: int = 3  # plateau: evaluations without gain in train.early_stopping_metric before lr *= gamma
    grad_accum: int = 1
    clip_grad_norm: float = 0.0  # 0: no clipping


@dataclass
class TrainConfig:
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    fsdp: bool = False
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPU
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every: int = 0  # optimizer steps; 0: at the end of every epoch only
    keep_checkpoints: int = 3
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs)
    progress: bool = True
    threads: int = 0  # torch intra-op threads in the training process (0: torch's default)
    eval_every: int = 0  # epochs between evaluations during training (0: none; the command evaluates at the end)
    early_stopping_patience: int = 0  # evaluations without improvement before stopping (0: off)
    early_stopping_metric: str = ""  # key of the family's evaluation dict (needs eval_every > 0)
    early_stopping_mode: str = "max"  # max | min
    # seed 001: workers decode, crop and draw the SpecAugment masks; the masked dB-mel of the batch is
    # one ops.mel_spectrogram call on the training device. null: on when CUDA is available.
    mel_on_device: bool | None = None


@dataclass
class EvalConfig:
    ks: tuple = (1, 5, 10)
    batch_size: int = 32
    max_clips: int = 0  # 0: the whole eval manifest
    before_training: bool = True
    chunk_size: int = 4096  # queries per affinity_topk call
    backend: str = "auto"
    probe_label: str = "shapes"  # key(s) of the manifest's "labels", comma-separated: one probe task each (no probe_split)
    probe_test_every: int = 5  # no probe_split: every n-th movie (source) is the probe's test set
    probe_split: str | None = None  # esc50:meta/esc50.csv | ucf101:ucfTrainTestlist | vggsound:vggsound.csv
    probe_features: str = "backbone"  # backbone: pre-projection 1024-d features (the paper) | head: 512-d outputs
    probe_kinds: list = field(default_factory=lambda: ["linear", "mlp"])
    probe_val_fraction: float = 0.2  # carved from the training split for the grid search (never test)
    probe_epochs: int = 200  # linear probe (B.3: SGD, lr 0.2, cosine, 200 epochs)
    probe_lr: float = 0.2  # the linear grid searches lr in {probe_lr, probe_lr / 4} x weight decay {0, 1e-3}
    probe_mlp_epochs: int = 100


@dataclass
class Config:
    """One run's configuration. ``model``/``data``/``loss``/``eval`` are the dataclasses of
    ``family`` (``avfast.train.family``); the defaults here are seed 001's (family ``dub``)."""

    name: str = "dub_x3d_r50"
    family: str = "dub"
    model: Any = field(default_factory=ModelConfig)
    data: Any = field(default_factory=DataConfig)
    loss: Any = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Any = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        """Check the shared sections, then the family's own rules; raises ``ConfigError`` naming the key."""
        from avfast.train.family import get_family

        family = get_family(self.family)
        for section in SECTIONS:
            expected = getattr(family, section)
            if not isinstance(getattr(self, section), expected):
                raise ConfigError(f"{section} of family {self.family!r} must be a {expected.__name__} "
                                  f"({type(getattr(self, section)).__name__} given)")
        o, t = self.optim, self.train
        check_ranges(self, [("optim.grad_accum", o.grad_accum >= 1), ("optim.lr", o.lr > 0),
                            ("optim.weight_decay", o.weight_decay >= 0), ("optim.epochs", o.epochs > 0),
                            ("optim.warmup_epochs", 0 <= o.warmup_epochs <= o.epochs),
                            ("optim.momentum", 0 <= o.momentum < 1), ("optim.gamma", 0 < o.gamma <= 1),
                            ("optim.min_lr_ratio", 0 <= o.min_lr_ratio <= 1),
                            ("optim.step_size", o.step_size > 0 or o.schedule != "step"),
                            ("optim.milestones", list(o.milestones) == sorted(o.milestones)
                             and all(m > 0 for m in o.milestones)),
                            ("optim.clip_grad_norm", o.clip_grad_norm >= 0),
                            ("train.eval_every", t.eval_every >= 0),
                            ("train.early_stopping_patience", t.early_stopping_patience >= 0)])
        check_choices([("optim.name", o.name, OPTIMIZERS), ("optim.schedule", o.schedule, SCHEDULES),
                       ("train.precision", t.precision, ("auto", "bf16", "fp16", "fp32")),
                       ("train.early_stopping_mode", t.early_stopping_mode, ("max", "min"))])
        if o.schedule == "multistep" and not o.milestones:
            raise ConfigError("optim.schedule 'multistep' needs optim.milestones (epochs), e.g. [20, 30]")
        if o.schedule == "plateau" and not (t.eval_every and t.early_stopping_metric and o.plateau_patience >= 1):
            raise ConfigError("optim.schedule 'plateau' needs train.eval_every > 0, train.early_stopping_metric "
                              "(the validation metric it watches) and optim.plateau_patience >= 1")
        if t.early_stopping_patience and not (t.eval_every and t.early_stopping_metric):
            raise ConfigError("train.early_stopping_patience needs train.eval_every > 0 and "
                              "train.early_stopping_metric (a key of the family's evaluation)")
        if family.validate is not None:
            family.validate(self)
        return self


SECTIONS = ("model", "data", "loss", "eval")  # the family-owned sections


def check_ranges(cfg: Any, checks: list[tuple[str, bool]]) -> None:
    """Raise ``ConfigError`` for the first ``(dotted key, ok)`` pair that is not ok, quoting the value."""
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"{key} out of range ({_get(cfg, key)!r})")


def check_choices(checks: list[tuple[str, Any, tuple]]) -> None:
    """Raise ``ConfigError`` for the first ``(dotted key, value, allowed)`` whose value is not allowed."""
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {allowed} ({value!r} given)")


def validate_dub(cfg: Config) -> None:
    """Seed 001's cross-key rules (family ``dub``)."""
    if cfg.data.variant not in VARIANTS:
        raise ConfigError(f"data.variant must be one of {VARIANTS} ({cfg.data.variant!r} given)")
    if isinstance(cfg.model.video, str) and cfg.model.video.lower() == "none":
        cfg.model.video = None
    if (cfg.data.variant == "audio_only") != (cfg.model.video is None):
        raise ConfigError("data.variant 'audio_only' goes with model.video: null, and only it "
                          f"(variant {cfg.data.variant!r}, video {cfg.model.video!r})")
    check_ranges(cfg, [("data.batch_size", cfg.data.batch_size >= 1), ("loss.tau", cfg.loss.tau > 0),
                       ("loss.source_weight", cfg.loss.source_weight > 0)])
    check_choices([("loss.gather", cfg.loss.gather, ("none", "all_gather", "ring")),
                   ("model.norm", cfg.model.norm, ("batch", "group")),
                   ("model.audio_sharing", cfg.model.audio_sharing, ("backbone", "all", "none"))])
    check_choices([("eval.probe_features", cfg.eval.probe_features, ("backbone", "head"))])
    check_ranges(cfg, [("eval.probe_test_every", cfg.eval.probe_test_every >= 2)])
    bad = [k for k in cfg.eval.probe_kinds if k not in ("linear", "mlp")]
    if bad or not 0 < cfg.eval.probe_val_fraction < 1:
        raise ConfigError(f"eval.probe_kinds must be a subset of [linear, mlp] and eval.probe_val_fraction in (0, 1) "
                          f"({cfg.eval.probe_kinds}, {cfg.eval.probe_val_fraction} given)")
    count = cfg.data.same_source_count
    if count is not None and not 0 <= count <= cfg.data.batch_size:
        raise ConfigError(f"data.same_source_count must be in [0, data.batch_size={cfg.data.batch_size}] ({count} given)")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _read_file(path: Path) -> dict:
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is a test dependency
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML/JSON") from exc
        data = yaml.safe_load(text) or {}
    elif suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"{path}: config files are .yaml, .yml, .toml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_file((path.parent / base).resolve()), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key} may not be null")
    for option in options:
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if base is list and isinstance(value, (list, tuple)):
            return list(value)
        if base in (bool, str, dict) and isinstance(value, base):
            return value
    raise ConfigError(f"{key} expects {hint} ({value!r} given)")


# keys that were replaced: a file using them gets an error naming the new key (null: ignored, so an
# old checkpoint's config loads with --set KEY=null)
RENAMED = {(ModelConfig, "shared_audio"): "model.audio_sharing: backbone | all | none (shared_audio true was 'all', "
                                 "false was 'none'; seed 001 shares the backbone: 'backbone')"}


def _fill(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in [n for n in data if (cls, n) in RENAMED]:
        if data[name] is not None:
            raise ConfigError(f"{prefix}{name} was replaced by {RENAMED[cls, name]}")
        data = {k: v for k, v in data.items() if k != name}
    unknown = sorted(set(data) - names)
    if unknown:
        section = prefix.rstrip(".") or "the config"
        raise ConfigError(f"unknown key {prefix + unknown[0]!r}; known keys of {section}: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping")
            kwargs[name] = _fill(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:  # pragma: no cover
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings to a nested dict (values parsed as YAML: ``1e-3``, ``[1, 2]``, ``null``)."""
    data = json.loads(json.dumps(data))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return data


def config_from_dict(data: dict) -> Config:
    """A validated ``Config`` from a nested dict (unknown keys raise ``ConfigError``).

    The family's ``defaults`` (its paper's optimiser, schedule, ...) come first, then ``data``."""
    from avfast.train.family import get_family

    name = data.get("family", "dub")
    if not isinstance(name, str):
        raise ConfigError(f"family must be a string ({name!r} given)")
    family = get_family(name)
    data = _merge(family.defaults or {}, data)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; known keys of the config: {sorted(known)}")
    kwargs = {}
    for key, value in data.items():
        cls = getattr(family, key) if key in SECTIONS else typing.get_type_hints(Config)[key]
        if dataclasses.is_dataclass(cls):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping")
            kwargs[key] = _fill(cls, value, f"{key}.")
        else:
            kwargs[key] = _coerce(value, cls, key)
    for section in SECTIONS:
        kwargs.setdefault(section, getattr(family, section)())
    return Config(**kwargs).validate()


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts/lists (JSON/YAML-ready)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                family: str | None = None) -> Config:
    """Defaults, then the file at ``path`` (YAML/TOML/JSON, with ``base:`` inheritance), then overrides.

    ``family``: the family a command trains; the file may omit ``family:`` but may not name another."""
    data = apply_overrides(_read_file(Path(path)) if path else {}, overrides or [])
    if family is not None:
        if data.setdefault("family", family) != family:
            raise ConfigError(f"{path or 'the overrides'}: family {data['family']!r}, but this command trains "
                              f"family {family!r}")
    return config_from_dict(data)
