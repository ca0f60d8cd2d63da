"""Family ``avqa``: seed 003's AVST on MUSIC-AVQA (or synthetic scenes), ``avfast avqa train|eval``.

    avfast avqa train --config configs/avqa/av_q_tg_sg.yaml --out runs/avst [--set data.root=MUSIC-AVQA]
    avfast avqa eval --checkpoint runs/avst --split test

``data.root`` empty trains and evaluates on ``avfast.data.avqa.SyntheticAVQA`` scenes. Evaluation
reports accuracy per question type as the seed's table (``avfast.metrics.qa``).
"""
from __future__ import annotations

import dataclasses

import torch

from avfast.models.avst import AVSTConfig, AVSTLoss, AVSTLossConfig, negative_visual
from avfast.train.family import Family

__all__ = ["FAMILY", "AVQADataConfig", "AVQAEvalConfig", "add_parser", "predict", "split_batches"]

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


@dataclasses.dataclass
class AVQADataConfig:
    """Where the questions come from; ``root`` empty: synthetic scenes."""

    root: str = ""                   # MUSIC-AVQA root (json/, feats/vggish, feats/res18_14x14)
    batch_size: int = 64             # the public code's
    num_workers: int = 0
    synthetic_questions: int = 4000  # training questions of the synthetic set (val / test: a quarter)
    synthetic_grid: int = 4          # synthetic visual maps are grid x grid
    synthetic_seed: int = 0          # the scenes' signatures (the same for every split)


@dataclasses.dataclass
class AVQAEvalConfig:
    batch_size: int = 256


def _validate(cfg) -> None:
    from avfast.train.config import ConfigError

    if cfg.data.batch_size < 2:
        raise ConfigError("data.batch_size must be >= 2 (the match loss pairs every clip with another clip's visual)")
    if not cfg.data.root:
        from avfast.data.avqa import SyntheticAVQA

        vocab = len(SyntheticAVQA(dim=cfg.model.visual_dim, segments=cfg.model.segments).vocabulary())
        if cfg.model.vocab_size < vocab:
            raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) < the synthetic vocabulary ({vocab})")
        if cfg.model.audio_input != "features" or cfg.model.visual_input != "features":
            raise ConfigError("synthetic scenes are features: model.audio_input and model.visual_input "
                              "must be 'features'")


def _build_model(cfg):
    from avfast.models.avst import AVSTModel

    if cfg.data.root:
        from avfast.data.avqa import AVQADataset
        from avfast.train.config import ConfigError

        words = len(AVQADataset(cfg.data.root, "train", segments=cfg.model.segments).vocab)
        if words > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) < the {words} question words of "
                              f"{cfg.data.root}: set model.vocab_size={words}")
    return AVSTModel(cfg.model)


def _build_objective(cfg, model):
    loss = AVSTLoss(cfg.loss)
    sg = cfg.model.spatial_grounding

    def objective(model, batch):
        visual = batch["visual"]
        out = model(batch["audio"], visual, batch["question"], visual_neg=negative_visual(visual) if sg else None)
        total, terms = loss(out, batch["answer"])
        return total, {k: v.detach() for k, v in terms.items()}

    return objective


def _synthetic(cfg):
    from avfast.data.avqa import SyntheticAVQA

    return SyntheticAVQA(segments=cfg.model.segments, dim=cfg.model.visual_dim, grid=cfg.data.synthetic_grid,
                         seed=cfg.data.synthetic_seed)


def _dataset(cfg, split: str):
    d = cfg.data
    if d.root:
        from avfast.data.avqa import AVQADataset

        return AVQADataset(d.root, split, segments=cfg.model.segments)
    n = d.synthetic_questions if split == "train" else max(d.synthetic_questions // 4, 1)
    return _synthetic(cfg).tensors(n, seed=cfg.train.seed * 10 + SPLIT_SEEDS[split])


def _build_data(cfg, split, info):
    from avfast.train.data import training_source

    return training_source(_dataset(cfg, split), cfg, info)


def split_batches(data, batch_size: int, num_workers: int = 0):
    """Batches of an evaluation split in order: slices of a dict of (N, ...) tensors, or a DataLoader."""
    if isinstance(data, dict):
        n = next(iter(data.values())).shape[0]
        return ({k: v[i:i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size))
    return iter(torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers))


def predict(cfg, model, data) -> dict:
    """Answers of a split: ``{"pred", "answer", "qtype"}`` (N,) tensors."""
    device = next(model.parameters()).device
    preds, answers, qtypes = [], [], []
    for batch in split_batches(data, cfg.eval.batch_size, cfg.data.num_workers):
        out = model(batch["audio"].to(device), batch["visual"].to(device), batch["question"].to(device))
        preds.append(out["logits"].argmax(-1).cpu())
        answers.append(batch["answer"])
        qtypes.append(batch["qtype"])
    return {"pred": torch.cat(preds), "answer": torch.cat(answers), "qtype": torch.cat(qtypes)}


def _evaluate(cfg, model, split, info):
    from avfast.metrics.qa import qa_accuracy

    p = predict(cfg, model, _dataset(cfg, split))
    results = qa_accuracy(p["pred"], p["answer"], p["qtype"])
    return {k: v for k, v in results.items() if not k.startswith("count/")}


FAMILY = Family(
    name="avqa", model=AVSTConfig, data=AVQADataConfig, loss=AVSTLossConfig, eval=AVQAEvalConfig,
    build_model=_build_model, build_objective=_build_objective, build_data=_build_data, validate=_validate,
    evaluate=_evaluate,
    # the public AVST training: Adam lr 1e-4, batch 64, StepLR(8 epochs, 0.1), 30 epochs
    defaults={"name": "avst", "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0, "epochs": 30.0,
                                        "warmup_epochs": 0.0, "schedule": "step", "step_size": 8.0, "gamma": 0.1},
              "train": {"early_stopping_metric": "All/Avg", "early_stopping_mode": "max"}},
)


def add_parser(sub) -> None:
    """``avfast avqa train|eval``."""
    from avfast.train.run import add_family_commands

    add_family_commands(sub, "avqa", "avqa", "audio-visual question answering (seed 003, AVST): train | eval")
