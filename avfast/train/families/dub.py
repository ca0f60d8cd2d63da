"""Family ``dub``: seed 001's dub-augmented audio-visual contrastive pretraining (``avfast pretrain``)."""
from __future__ import annotations

from avfast.train.config import DataConfig, EvalConfig, LossConfig, ModelConfig, validate_dub
from avfast.train.family import Family

__all__ = ["FAMILY"]


def _build_model(cfg):
    from avfast.train.factory import build_model

    return build_model(cfg)


def _build_objective(cfg, model):
    from avfast.train.factory import build_objective

    return build_objective(cfg)


def _manifest(cfg, split: str) -> str:
    manifest = cfg.data.manifest if split == "train" else (cfg.data.eval_manifest or cfg.data.manifest)
    if not manifest:
        raise ValueError("family 'dub' needs data.manifest (avfast pretrain --data MANIFEST)")
    return manifest


def _build_data(cfg, split, info):
    from avfast.train.data import ManifestSource

    return ManifestSource(cfg, _manifest(cfg, split), rank=info.rank, world_size=info.world_size)


def _evaluate(cfg, model, split, info):
    from avfast.train.cli import _evaluate as retrieval

    return retrieval(cfg, model, _manifest(cfg, split), info, label=f"({split}) ")


FAMILY = Family(name="dub", model=ModelConfig, data=DataConfig, loss=LossConfig, eval=EvalConfig,
                build_model=_build_model, build_objective=_build_objective, build_data=_build_data,
                validate=validate_dub, evaluate=_evaluate)
