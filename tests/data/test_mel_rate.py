"""Rate-aware mel preset: window and hop kept in seconds (seed 001's no-speech variant runs at 44.1 kHz)."""
import torch

from avfast.ops import MelConfig, mel_spectrogram


def test_dub_preset_at_44k1():
    cfg = MelConfig.preset("dub", sample_rate=44100)
    assert (cfg.win, cfg.n_fft, cfg.hop, cfg.n_mels) == (941, 1024, 460, 96)
    assert cfg.fmax == 22050.0
    assert cfg.frames(3 * 44100) == 288 == MelConfig.preset("dub").frames(3 * 48000)
    y = mel_spectrogram(torch.randn(1, 2, 3 * 44100), cfg)
    assert y.shape == (1, 2, 96, 288)


def test_same_rate_keeps_preset_and_overrides_win():
    assert MelConfig.preset("dub") == MelConfig.preset("dub", sample_rate=48000)
    assert MelConfig.preset("dub").win == 1024 and MelConfig.preset("dub").hop == 501
    cfg = MelConfig.preset("dub", sample_rate=44100, hop_length=441)
    assert cfg.hop == 441 and cfg.win == 941
    assert MelConfig.preset("event", sample_rate=32000).target_frames == 1000  # frames = same seconds


def test_dataset_uses_data_rate(tmp_path):
    from avfast.data import DataConfig, QuadrupleDataset
    from avfast.data.manifest import Clip

    clip = Clip(video="x.mp4", audio={"en": "x.flac"}, source="m", start=0.0, end=4.0)
    ds = QuadrupleDataset([clip], "monolingual", DataConfig(sample_rate=44100))
    assert ds.mel_config().hop == 460 and ds.mel_config().sample_rate == 44100


def test_explicit_fft_size_keeps_its_window():
    cfg = MelConfig.preset("dub", sample_rate=16000, n_fft=128, hop_length=61, n_mels=12)
    assert (cfg.n_fft, cfg.win, cfg.hop) == (128, 128, 61)
    assert MelConfig.preset("dub", sample_rate=16000, n_fft=512).hop == 167  # hop still kept in seconds
