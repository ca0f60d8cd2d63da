"""Family ``pacs``: seed 000's PACS task (LateFusion / CLIP / AudioCLIP heads, w/ DSE and CLM = DCL).

    avfast pacs train --config configs/pacs/dcl.yaml --out runs/pacs_dcl [--set data.root=PACS]
    avfast pacs eval --checkpoint runs/pacs_dcl --split test
    avfast pacs seeds --config configs/pacs/dcl.yaml --out runs/pacs_dcl_seeds --seeds 5 [--k 1 3 5 10 20 64]

``data.root`` empty trains and evaluates on ``SyntheticPACS`` pairs (widths from ``model``).
Evaluation reports ``acc`` (PACS), ``material_acc`` (the PACS-material subset, when the layout has
it), and ``per_material`` (accuracy grouped by the material of the answer object). ``seeds`` trains
one run per seed (and per k) and prints mean ± std of the test accuracies.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import statistics
from pathlib import Path

import torch

from avfast.models.dcl import DCLConfig, DCLLossConfig
from avfast.train.family import Family

__all__ = ["FAMILY", "PACSDataConfig", "PACSEvalConfig", "add_parser", "pacs_split", "pacs_metrics"]

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
BATCH_KEYS = ("text", "video1", "video2", "audio1", "audio2", "label", "material")


@dataclasses.dataclass
class PACSDataConfig:
    """Where the pairs come from; ``root`` empty: synthetic pairs (sizes below, widths from ``model``)."""

    root: str = ""                   # PACS layout (avfast.data.pacs.load_pacs)
    batch_size: int = 64             # the seed's batch
    synthetic_train: int = 1024
    synthetic_eval: int = 512        # val and test pairs each
    synthetic_materials: int = 3
    synthetic_frames: int = 8        # the seed's 8 frames
    synthetic_audio_frames: int = 4


@dataclasses.dataclass
class PACSEvalConfig:
    batch_size: int = 64             # CLM relates the pairs of one batch: evaluate in batches like training
    material: bool = True            # also the PACS-material subset (when the layout has it)


def _validate(cfg) -> None:
    from avfast.train.config import ConfigError

    if cfg.data.batch_size < 1 or cfg.eval.batch_size < 1:
        raise ConfigError("data.batch_size and eval.batch_size must be >= 1")
    if cfg.model.clm and cfg.model.k > cfg.data.batch_size:
        raise ConfigError(f"model.k ({cfg.model.k}) must be <= data.batch_size ({cfg.data.batch_size}): "
                          "CLM picks neighbours inside a batch")


def _build_model(cfg):
    from avfast.models.dcl import build_pacs_model

    return build_pacs_model(**dataclasses.asdict(cfg.model))


def _build_objective(cfg, model):
    from avfast.models.dcl import dcl_objective

    return lambda m, batch: dcl_objective(m, batch, cfg.loss)


def pacs_split(cfg, split: str, subset: str = "pacs") -> dict | None:
    """The split's tensors (``load_pacs`` or synthetic); None when a real layout lacks the subset.

    Cached per (source, split, subset), so evaluating every epoch reads the feature files once."""
    d, m = cfg.data, cfg.model
    if d.root:
        return _real_split(str(Path(d.root).resolve()), split, subset)
    if subset != "pacs":
        return None
    n = d.synthetic_train if split == "train" else d.synthetic_eval
    return _synthetic_split(d.synthetic_materials, d.synthetic_frames, d.synthetic_audio_frames, m.text_dim,
                            m.video_dim, m.audio_dim, cfg.train.seed, split, n)


@functools.lru_cache(maxsize=8)
def _real_split(root: str, split: str, subset: str) -> dict | None:
    from avfast.data.pacs import load_pacs, pacs_split_file

    if subset != "pacs" and not pacs_split_file(Path(root), split, subset).exists():
        return None
    return load_pacs(root, split, subset)


@functools.lru_cache(maxsize=8)
def _synthetic_split(materials, frames, audio_frames, text_dim, video_dim, audio_dim, seed, split, n) -> dict:
    from avfast.data.pacs import SyntheticPACS

    gen = SyntheticPACS(materials=materials, frames=frames, text_dim=text_dim, video_dim=video_dim,
                        audio_dim=audio_dim, audio_frames=audio_frames, seed=seed)
    out = gen.tensors(n, seed=seed * 10 + SPLIT_SEEDS[split])
    out["materials"] = gen.material_names
    return out


def _build_data(cfg, split, info):
    from avfast.train.data import TensorSource

    data = pacs_split(cfg, split)
    return TensorSource({k: data[k] for k in BATCH_KEYS}, cfg.data.batch_size, seed=cfg.train.seed,
                        rank=info.rank, world_size=info.world_size)


def pacs_metrics(correct: torch.Tensor, material: torch.Tensor, names: list[str]) -> dict:
    """``acc`` and ``per_material`` {name: acc} from per-item correctness (N,) and material ids (N,)."""
    out = {"acc": float(correct.float().mean()) if correct.numel() else float("nan"), "per_material": {}}
    for i, name in enumerate(names):
        hit = correct[material == i]
        if hit.numel():
            out["per_material"][name] = float(hit.float().mean())
    return out


def _accuracy(cfg, model, data: dict) -> dict:
    from avfast.models.late_fusion import predict_answer

    device = next(model.parameters()).device
    n, bs, correct = data["label"].shape[0], cfg.eval.batch_size, []
    for i in range(0, n, bs):
        batch = {k: data[k][i:i + bs].to(device) for k in BATCH_KEYS[:-1]}
        out = model(batch)
        correct.append((predict_answer(out["q"], out["o1"], out["o2"]) == batch["label"]).cpu())
    return pacs_metrics(torch.cat(correct), data["material"], data["materials"])


def _evaluate(cfg, model, split, info):
    results = _accuracy(cfg, model, pacs_split(cfg, split))
    if cfg.eval.material:
        sub = pacs_split(cfg, split, "material")
        if sub is not None:
            results["material_acc"] = _accuracy(cfg, model, sub)["acc"]
    return results


FAMILY = Family(
    name="pacs", model=DCLConfig, data=PACSDataConfig, loss=DCLLossConfig, eval=PACSEvalConfig,
    build_model=_build_model, build_objective=_build_objective, build_data=_build_data, validate=_validate,
    evaluate=_evaluate,
    # the seed's LateFusion setting: lr 5e-4, wd 5e-5, batch 64, 40 epochs with early stopping
    defaults={"name": "pacs_late_fusion_dcl",
              "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 5e-5, "epochs": 40.0, "warmup_epochs": 0.0,
                        "schedule": "constant"},
              "train": {"eval_every": 1, "early_stopping_patience": 5, "early_stopping_metric": "acc"}},
)


def run_seeds(config: str | None, out: str, seeds: int = 5, ks: list[int] | None = None, sets: list[str] = (),
              device: str = "auto", log=print) -> dict:
    """Train one run per seed (and per k of ``ks``); returns {label: {"acc": [...], "mean", "std", ...}}."""
    from avfast.train.config import load_config
    from avfast.train.run import train_family

    summary = {}
    for k in ks or [None]:
        label = f"k={k}" if k is not None else "runs"
        accs, material = [], []
        for seed in range(seeds):
            extra = [f"train.seed={seed}"] + ([f"model.k={k}"] if k is not None else [])
            cfg = load_config(config, list(sets) + extra, family="pacs")
            report = train_family(cfg, Path(out) / label.replace("=", "") / f"seed{seed}", device=device,
                                  log=lambda *_: None)
            accs.append(report["test"]["acc"])
            if "material_acc" in report["test"]:
                material.append(report["test"]["material_acc"])
        row = {"acc": accs, "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if seeds > 1 else 0.0}
        if material:
            row.update(material_acc=material, material_mean=statistics.fmean(material),
                       material_std=statistics.stdev(material) if seeds > 1 else 0.0)
        summary[label] = row
        line = f"{label}: PACS acc {100 * row['mean']:.1f} ± {100 * row['std']:.1f} over {seeds} seeds"
        if material:
            line += f"; PACS-material {100 * row['material_mean']:.1f} ± {100 * row['material_std']:.1f}"
        log(line)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "seeds.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_parser(sub) -> None:
    """``avfast pacs train|eval|seeds``."""
    from avfast.train.run import add_family_commands

    actions = add_family_commands(sub, "pacs", "pacs", "physical audiovisual commonsense (seed 000, DCL): "
                                                       "train | eval | seeds")
    p = actions.add_parser("seeds", help="train one run per seed (and per k); mean ± std of the test accuracy")
    p.add_argument("--config", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--k", type=int, nargs="*", default=None, help="CLM k sweep, e.g. 1 3 5 10 20 64")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=lambda a: run_seeds(a.config, a.out, a.seeds, a.k, a.set or [], a.device) and 0)
