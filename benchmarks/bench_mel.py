"""Mel spectrogram on CPU: avfast ``cpp`` vs the torch reference chain and vs librosa.

Cases (seed presets, masks on): ``event`` 32 x 10 s at 16 kHz, ``dub`` 32 x 10 s at 48 kHz. All sides
take float32 waves and give float32 log-mel / dB; throughput in audio-seconds per second.
``avfast cpp`` uses ATen's batched rFFT per block of frames (the default); ``cpp (own FFT)`` is the same
kernel with our radix-2 block FFT (AVFAST_MEL_FFT=own), kept for comparison.
"""
import numpy as np
import pytest
import torch
from _harness import run, size

from avfast.ops import MelConfig, mel_spectrogram

BATCH = size(32, 4)
SECONDS = size(10, 2)
CASES = {"event": 16000, "dub": 48000}


def _wave(rate):
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(BATCH, rate * SECONDS, generator=g)


def _avfast(wave, cfg, backend):
    return mel_spectrogram(wave, cfg, generator=torch.Generator().manual_seed(0), backend=backend)


def _librosa(wave, cfg):
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    out = []
    for x in wave.numpy():
        S = librosa.feature.melspectrogram(y=x, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop,
                                           win_length=cfg.win, center=True, pad_mode="reflect", power=2.0,
                                           n_mels=cfg.n_mels, htk=True, norm=None)
        y = librosa.power_to_db(S, amin=cfg.log_eps) if cfg.log == "db" else np.log(S + cfg.log_offset)
        f_w = int(rng.integers(0, y.shape[0] // 2 + 1))  # one mask per axis up to 50 %, as the presets draw
        f_s = int(rng.integers(0, y.shape[0] - f_w + 1))
        t_w = int(rng.integers(0, y.shape[1] // 2 + 1))
        t_s = int(rng.integers(0, y.shape[1] - t_w + 1))
        y[f_s:f_s + f_w] = 0
        y[:, t_s:t_s + t_w] = 0
        out.append(y)
    return np.stack(out)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", ["avfast cpp", "avfast cpp (own FFT)", "torch chain"])
def test_mel_vs_torch(benchmark, case, provider, monkeypatch):
    cfg = MelConfig.preset(case, masks=True)
    wave = _wave(CASES[case])
    if provider == "avfast cpp (own FFT)":
        monkeypatch.setenv("AVFAST_MEL_FFT", "own")
    backend = "torch" if provider == "torch chain" else "cpp"
    run(benchmark, _avfast, wave, cfg, backend, group=f"mel {case} {BATCH}x{SECONDS}s vs torch chain",
        provider=provider, baseline=provider == "torch chain", items=BATCH * SECONDS, unit="audio-s")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", ["avfast cpp", "librosa"])
def test_mel_vs_librosa(benchmark, case, provider):
    cfg = MelConfig.preset(case, masks=True)
    wave = _wave(CASES[case])
    fn, args = (_librosa, (wave, cfg)) if provider == "librosa" else (_avfast, (wave, cfg, "cpp"))
    run(benchmark, fn, *args, group=f"mel {case} {BATCH}x{SECONDS}s vs librosa", provider=provider,
        baseline=provider == "librosa", items=BATCH * SECONDS, unit="audio-s", rounds=3)

