"""``MelConfig``: every setting of the fused mel spectrogram, with the seeds' presets."""
from __future__ import annotations

import dataclasses
import math
from typing import Union

from avfast.ops._mel_filters import MEL_SCALES, WINDOWS, frame_offset, num_frames

LOG_MODES = ("none", "log", "db")
LAYOUTS = ("mel_time", "time_mel")
PAD_MODES = ("reflect", "constant", "replicate")
FLOAT32_EPS = 1.1920928955078125e-07  # kaldi's log floor (std::numeric_limits<float>::epsilon())

Width = Union[int, float]


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Settings of ``avfast.ops.mel_spectrogram`` (field names follow torchaudio's).

    Framing: ``n_fft``, ``win_length`` (default ``n_fft``), ``hop_length`` (default
    ``win_length // 2``), ``window`` (``hann`` periodic, ``hanning`` symmetric as kaldi, ``hamming``,
    ``povey``, ``rectangular``), ``center`` + ``pad_mode`` (reflect | constant | replicate) as
    ``torch.stft``. ``kaldi=True`` switches to kaldi framing: frames of ``win_length`` samples zero-padded
    to ``n_fft``, ``snip_edges`` (else symmetric reflection at the edges), per-frame ``remove_dc`` and
    ``preemphasis`` (x[i] - c * x[i-1], x[-1] := x[0]). ``dither``: Gaussian noise of that standard
    deviation added to the wave, drawn from the call's generator.

    Spectrum: ``|X| ** power`` through ``n_mels`` filters between ``f_min`` and ``f_max`` (default
    Nyquist) on the ``mel_scale`` htk | slaney | kaldi with ``norm`` None | "slaney".

    Output: ``log`` = "none" | "log" (``log(max(x + log_offset, log_eps))``) | "db"
    (``10 log10(max(x, log_eps))``, then per sample ``max(y, max(y) - top_db)`` when ``top_db`` is set);
    frames past a sample's end and up to ``target_frames`` hold ``pad_value``; masks hold
    ``mask_value`` (a float, or "mean": the mean of that sample and channel); finally ``(y - mean) / std``.
    ``layout`` "mel_time" gives (..., n_mels, frames), "time_mel" (..., frames, n_mels).

    Masks (SpecAugment, only when ``masks=True``): ``freq_masks`` masks of width up to
    ``freq_mask_max`` mel rows and ``time_masks`` of up to ``time_mask_max`` frames; an int is a
    number of bins, a float in (0, 1] a fraction of the axis (of the sample's valid frames in time).
    ``check_finite=True`` rejects waves holding NaN or inf (one extra pass over the wave).
    """

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int | None = None
    hop_length: int | None = None
    f_min: float = 0.0
    f_max: float | None = None
    n_mels: int = 128
    window: str = "hann"
    center: bool = True
    pad_mode: str = "reflect"
    power: float = 2.0
    norm: str | None = None
    mel_scale: str = "htk"
    kaldi: bool = False
    snip_edges: bool = True
    preemphasis: float = 0.0
    remove_dc: bool = False
    dither: float = 0.0
    log: str = "none"
    log_eps: float = 1e-10
    log_offset: float = 0.0
    top_db: float | None = None
    mean: float = 0.0
    std: float = 1.0
    target_frames: int | None = None
    pad_value: float = 0.0
    layout: str = "mel_time"
    masks: bool = False
    freq_masks: int = 1
    freq_mask_max: Width = 0
    time_masks: int = 1
    time_mask_max: Width = 0
    mask_value: float | str = 0.0
    check_finite: bool = False

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"MelConfig: {what}")

        need(self.sample_rate > 0, f"sample_rate must be > 0 ({self.sample_rate} given)")
        need(self.n_fft > 0, f"n_fft must be > 0 ({self.n_fft} given)")
        need(0 < self.win <= self.n_fft, f"win_length must be in [1, n_fft={self.n_fft}] ({self.win_length} given)")
        need(self.hop > 0, f"hop_length must be > 0 ({self.hop_length} given)")
        need(self.n_mels > 0, f"n_mels must be > 0 ({self.n_mels} given)")
        need(0 <= self.f_min < self.fmax <= self.sample_rate / 2,
             f"need 0 <= f_min < f_max <= sample_rate / 2 (f_min={self.f_min}, f_max={self.fmax})")
        need(self.window in WINDOWS, f"window must be one of {WINDOWS} ({self.window!r} given)")
        need(self.pad_mode in PAD_MODES, f"pad_mode must be one of {PAD_MODES} ({self.pad_mode!r} given)")
        need(self.mel_scale in MEL_SCALES, f"mel_scale must be one of {MEL_SCALES} ({self.mel_scale!r} given)")
        need(self.norm in (None, "slaney"), f"norm must be None or 'slaney' ({self.norm!r} given)")
        need(not (self.norm and self.mel_scale == "kaldi"), "norm='slaney' does not apply to the kaldi mel scale")
        need(self.power > 0, f"power must be > 0 ({self.power} given)")
        need(self.log in LOG_MODES, f"log must be one of {LOG_MODES} ({self.log!r} given)")
        need(self.log_eps > 0, f"log_eps must be > 0 ({self.log_eps} given)")
        need(self.top_db is None or (self.log == "db" and self.top_db >= 0),
             f"top_db needs log='db' and a value >= 0 (log={self.log!r}, top_db={self.top_db})")
        need(self.std != 0 and math.isfinite(self.std), f"std must be finite and non-zero ({self.std} given)")
        need(self.target_frames is None or self.target_frames > 0,
             f"target_frames must be None or > 0 ({self.target_frames} given)")
        need(self.layout in LAYOUTS, f"layout must be one of {LAYOUTS} ({self.layout!r} given)")
        need(self.kaldi or (self.preemphasis == 0 and not self.remove_dc),
             "preemphasis and remove_dc are kaldi per-frame steps: set kaldi=True")
        need(not (self.kaldi and self.center), "kaldi framing has no center padding: set center=False "
             "(snip_edges=False gives kaldi's own edge handling)")
        need(self.dither >= 0, f"dither must be >= 0 ({self.dither} given)")
        need(math.isfinite(self.pad_value), f"pad_value must be finite ({self.pad_value} given)")
        need(self.mask_value == "mean" or (isinstance(self.mask_value, (int, float)) and math.isfinite(self.mask_value)),
             f"mask_value must be a finite float or 'mean' ({self.mask_value!r} given)")
        for axis in ("freq", "time"):
            count, width = getattr(self, f"{axis}_masks"), getattr(self, f"{axis}_mask_max")
            need(isinstance(count, int) and count >= 0, f"{axis}_masks must be an int >= 0 ({count!r} given)")
            need((isinstance(width, int) and width >= 0) or (isinstance(width, float) and 0 < width <= 1),
                 f"{axis}_mask_max must be an int >= 0 (bins) or a float in (0, 1] (fraction) ({width!r} given)")

    # Resolved values ------------------------------------------------------------------------

    @property
    def win(self) -> int:
        return self.win_length or self.n_fft

    @property
    def hop(self) -> int:
        return self.hop_length or max(self.win // 2, 1)

    @property
    def fmax(self) -> float:
        return float(self.f_max) if self.f_max is not None else self.sample_rate / 2

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, length):
        """Frames computed from a wave of ``length`` samples (before ``target_frames``); int or (B,) tensor."""
        return num_frames(length, n_fft=self.n_fft, win_length=self.win, hop_length=self.hop, kaldi=self.kaldi,
                          center=self.center, snip_edges=self.snip_edges)

    def out_frames(self, length: int) -> int:
        """Frames of the output for a wave tensor of ``length`` samples."""
        return self.target_frames or self.frames(length)

    @property
    def offset(self) -> int:
        return frame_offset(n_fft=self.n_fft, win_length=self.win, hop_length=self.hop, kaldi=self.kaldi,
                            center=self.center, snip_edges=self.snip_edges)

    @property
    def boundary(self) -> str:
        """How samples outside [0, length) are read: reflect | constant | replicate | symmetric (kaldi)."""
        return "symmetric" if self.kaldi else self.pad_mode

    def min_length(self) -> int:
        """Shortest wave that gives at least one frame (and a valid reflection)."""
        if self.kaldi:
            return self.win
        if self.center:
            return self.n_fft // 2 + 1 if self.pad_mode == "reflect" else 1
        return self.n_fft

    @classmethod
    def preset(cls, name: str, **overrides) -> "MelConfig":
        """A seed preset (``ast``, ``dub``, ``event``) with ``overrides``, e.g. ``preset("dub", masks=True)``.

        A ``sample_rate`` other than the preset's keeps the window and hop in seconds (rounded to
        samples), ``n_fft`` the next power of two >= the window and ``f_max`` at most Nyquist, unless
        those are overridden too: ``preset("dub", sample_rate=44100)`` has win_length 941, n_fft 1024,
        hop 460, f_max Nyquist and 288 frames for 3 s, as the 48 kHz preset.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown mel preset {name!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[name]
        rate = overrides.get("sample_rate", base.sample_rate)
        if rate != base.sample_rate and rate > 0 and not {"n_fft", "win_length"} <= set(overrides):
            scale = rate / base.sample_rate
            timing: dict = {"hop_length": max(1, round(base.hop * scale))}
            if "n_fft" not in overrides:  # the window in seconds, the FFT the next power of two
                win = overrides.get("win_length") or max(1, round(base.win * scale))
                timing.update(win_length=win, n_fft=1 << (win - 1).bit_length())
            if base.f_max is not None:
                timing["f_max"] = min(base.f_max, rate / 2)
            overrides = {**timing, **overrides}
        return dataclasses.replace(base, **overrides)


PRESETS: dict[str, MelConfig] = {
    # Seed 000 (AST front end, PACS): kaldi fbank, 25 ms / 10 ms, 128 bins, 1024 frames, AST norm.
    "ast": MelConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window="hanning", center=False,
                     kaldi=True, snip_edges=True, preemphasis=0.97, remove_dc=True, n_mels=128, f_min=20.0,
                     mel_scale="kaldi", log="log", log_eps=FLOAT32_EPS, target_frames=1024, mean=-4.2677393,
                     std=4.5689974 * 2, layout="time_mel", freq_masks=1, freq_mask_max=48, time_masks=1,
                     time_mask_max=144),
    # Seed 001: 48 kHz, n_fft 1024, hop 501, 96 mels, dB; time and freq masks up to 50 % of each axis.
    "dub": MelConfig(sample_rate=48000, n_fft=1024, hop_length=501, n_mels=96, log="db", freq_masks=1,
                     freq_mask_max=0.5, time_masks=1, time_mask_max=0.5),
    # Seed 004: 16 kHz, n_fft 512, hop 160, win 320 hann, center reflect, 80 mels, 1000 x 80 log-mel.
    # The seed gives no log floor or masks: log(x + 1e-6) and two 10 % masks per axis are ours.
    "event": MelConfig(sample_rate=16000, n_fft=512, win_length=320, hop_length=160, n_mels=80, log="log",
                       log_offset=1e-6, target_frames=1000, freq_masks=2, freq_mask_max=0.1, time_masks=2,
                       time_mask_max=0.1),
}


def as_config(config: MelConfig | str) -> MelConfig:
    """``config`` itself, or the preset it names."""
    if isinstance(config, MelConfig):
        return config
    if isinstance(config, str):
        return MelConfig.preset(config)
    raise TypeError(f"config must be a MelConfig or a preset name ({type(config).__name__} given)")
