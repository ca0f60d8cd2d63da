"""Seed 001's config keys: audio_sharing (and the old shared_audio key), same_source_count, primary_language."""
from pathlib import Path

import pytest

from avfast.train.config import ConfigError, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = sorted(CONFIGS.glob("controlled/*.yaml")) + [CONFIGS / "dub_x3d_r50.yaml"]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_configs_share_the_audio_backbone(path):
    cfg = load_config(path)
    assert cfg.model.audio_sharing == "backbone" and cfg.data.primary_language == "en"
    if path.parent.name == "controlled":
        assert cfg.data.same_source_count == 12 and cfg.data.batch_size == 26


def test_old_shared_audio_key_names_the_new_one():
    for value in (True, False):
        with pytest.raises(ConfigError, match="model.audio_sharing"):
            config_from_dict({"model": {"shared_audio": value}})
    cfg = config_from_dict({"model": {"shared_audio": None, "audio_sharing": "none"}})  # old checkpoints
    assert cfg.model.audio_sharing == "none"
    with pytest.raises(ConfigError, match="model.audio_sharing must be one of"):
        config_from_dict({"model": {"audio_sharing": "heads"}})
    with pytest.raises(ConfigError, match="same_source_count"):
        config_from_dict({"data": {"same_source_count": 30, "batch_size": 26}})


def test_factory_builds_the_configured_sharing():
    from avfast.train.factory import build_model

    base = {"model": {"video": "x3d_tiny", "audio": "acoustic_resnet_tiny", "embed_dim": 16, "video_kwargs": {}}}
    for mode in ("backbone", "all", "none"):
        cfg = config_from_dict({**base, "model": {**base["model"], "audio_sharing": mode}})
        assert build_model(cfg).audio_sharing == mode
    cfg = config_from_dict({**base, "data": {"variant": "no_speech"}})
    assert build_model(cfg).audio_sharing == "all"  # no secondary audio: no unused second head
