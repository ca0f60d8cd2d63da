"""GPU mel spectrogram: avfast Triton / CUDA vs the torchaudio chain (batch 256 x 10 s, float32).

Baseline: torchaudio MelSpectrogram + AmplitudeToDB + FrequencyMasking + TimeMasking (iid_masks on a
4-D view), else the same chain in plain torch (avfast's ``torch`` backend). Also the Triton DFT in
TF32 (``AVFAST_MEL_DFT_PRECISION=tf32``) with its max abs error against fp32. Reports ms, audio-s/s,
achieved GB/s (wave read + output write) and DFT TFLOP/s (8 * win * n_freq flops per frame).
"""
from __future__ import annotations

import os

import torch
from _timing import peak_mib, row, time_ms

from avfast.ops import MelConfig, mel_spectrogram

BATCH, SECONDS = 256, 10
CASES = {"event": 16000, "dub": 48000}


def _torchaudio_chain(cfg: MelConfig, device):
    try:
        import torchaudio.transforms as T
    except ImportError:
        return None
    mel = T.MelSpectrogram(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win, hop_length=cfg.hop,
                           n_mels=cfg.n_mels, center=cfg.center, pad_mode=cfg.pad_mode).to(device)
    db = T.AmplitudeToDB(stype="power", top_db=cfg.top_db).to(device)
    fmask = T.FrequencyMasking(int(cfg.n_mels * 0.5), iid_masks=True)
    tmask = T.TimeMasking(int(cfg.out_frames(cfg.sample_rate * SECONDS) * 0.5), iid_masks=True)

    def chain(wave):
        y = db(mel(wave))[:, None]
        return tmask(fmask(y))[:, 0]

    return chain


def _stats(cfg: MelConfig, ms: float) -> dict:
    frames = cfg.frames(cfg.sample_rate * SECONDS) * BATCH
    bytes_moved = BATCH * cfg.sample_rate * SECONDS * 4 + frames * cfg.n_mels * 4
    flops = 8.0 * cfg.win * cfg.n_freq * frames
    return {"audio_s_per_s": BATCH * SECONDS / (ms / 1e3), "GB/s": bytes_moved / (ms / 1e3) / 1e9,
            "DFT TFLOP/s": flops / (ms / 1e3) / 1e12}


def run() -> list[dict]:
    device = torch.device("cuda")
    rows = []
    for case, rate in CASES.items():
        cfg = MelConfig.preset(case, masks=True)
        wave = 0.1 * torch.randn(BATCH, rate * SECONDS, device=device)
        chain = _torchaudio_chain(cfg, device)
        g = torch.Generator(device=device).manual_seed(0)
        if chain is not None:
            ms = time_ms(lambda: chain(wave))
            rows.append(row("mel", case, "torchaudio chain", ms, baseline=True, **_stats(cfg, ms)))
        ms = time_ms(lambda: mel_spectrogram(wave, cfg, generator=g, backend="torch"))
        rows.append(row("mel", case, "torch chain (avfast reference)", ms, baseline=chain is None, **_stats(cfg, ms)))
        exact = mel_spectrogram(wave, cfg, generator=torch.Generator(device=device).manual_seed(1), backend="torch")
        for backend in ("triton", "cuda"):
            try:
                fn = lambda: mel_spectrogram(wave, cfg, generator=g, backend=backend)
                ms = time_ms(fn)
            except Exception as exc:  # noqa: BLE001 - a backend missing on this machine is reported, not fatal
                rows.append(row("mel", case, backend, float("nan"), note=f"unavailable: {exc}"[:120]))
                continue
            out = mel_spectrogram(wave, cfg, generator=torch.Generator(device=device).manual_seed(1), backend=backend)
            rows.append(row("mel", case, backend, ms, peak_MiB=peak_mib(fn), max_abs_err=(out - exact).abs().max().item(),
                            **_stats(cfg, ms)))
        os.environ["AVFAST_MEL_DFT_PRECISION"] = "tf32"
        try:
            ms = time_ms(lambda: mel_spectrogram(wave, cfg, generator=g, backend="triton"))
            out = mel_spectrogram(wave, cfg, generator=torch.Generator(device=device).manual_seed(1), backend="triton")
            rows.append(row("mel", case, "triton tf32 DFT", ms, max_abs_err=(out - exact).abs().max().item(),
                            **_stats(cfg, ms)))
        finally:
            os.environ.pop("AVFAST_MEL_DFT_PRECISION", None)
    return rows
