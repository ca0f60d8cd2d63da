"""avfast.ops.mel_spectrogram: reference vs librosa / kaldi formulas, masks, backends, errors."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import assert_close, assert_deterministic, check_compiles, check_custom_op, fused_backends_for, poison_padding

from avfast.ops import MelConfig, MelMasks, mel_spectrogram, mel_spectrogram_reference
from avfast._ext import has_op
from avfast.ops.mel import _flat, _mel_op


FUSED = fused_backends_for("mel_spectrogram")
# Small configs covering every branch (kept short for the Triton interpreter).
SMALL = {
    "event": MelConfig.preset("event", target_frames=None, n_fft=128, win_length=96, hop_length=40, n_mels=16),
    "dub": MelConfig.preset("dub", sample_rate=16000, n_fft=128, hop_length=61, n_mels=12, top_db=60.0),
    "ast": MelConfig.preset("ast", n_fft=128, win_length=100, hop_length=40, n_mels=16, target_frames=40),
    "kaldi_no_snip": MelConfig.preset("ast", n_fft=128, win_length=100, hop_length=40, n_mels=16, target_frames=None,
                                      snip_edges=False, window="povey", layout="mel_time"),
    "slaney_power": MelConfig(n_fft=64, hop_length=17, n_mels=10, mel_scale="slaney", norm="slaney", power=1.0,
                              center=False, layout="time_mel"),
    "constant_pad_mean_mask": MelConfig(n_fft=64, hop_length=16, n_mels=8, pad_mode="constant", log="db",
                                        mask_value="mean", pad_value=-3.0, window="hamming"),
}


def _wave(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


# Reference vs librosa and kaldi -----------------------------------------------------------------


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_reference_power_matches_librosa(scale):
    librosa = pytest.importorskip("librosa")  # only the librosa comparisons need it
    cfg = MelConfig(sample_rate=16000, n_fft=512, win_length=320, hop_length=160, n_mels=40,
                    mel_scale=scale, norm="slaney" if scale == "slaney" else None, f_min=30.0, f_max=7000.0)
    x = _wave(2, 8000, dtype=torch.float64)
    ours = mel_spectrogram_reference(x, cfg).double()
    for b in range(2):
        ref = librosa.feature.melspectrogram(y=x[b].numpy(), sr=16000, n_fft=512, hop_length=160, win_length=320,
                                             window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=40,
                                             fmin=30.0, fmax=7000.0, htk=scale == "htk",
                                             norm="slaney" if scale == "slaney" else None)
        assert_close(ours[b], torch.from_numpy(ref), rtol=1e-4, atol=1e-6, msg=f"{scale} power item {b}")


def test_dub_db_matches_librosa_power_to_db():
    librosa = pytest.importorskip("librosa")
    cfg = MelConfig.preset("dub", top_db=80.0)
    x = _wave(2, 48000 // 2, dtype=torch.float64)
    x[1] *= 1e-3  # a quiet item: per-sample top_db must not use the loud item's peak
    ours = mel_spectrogram(x, cfg, backend="torch")
    for b in range(2):
        S = librosa.feature.melspectrogram(y=x[b].numpy(), sr=48000, n_fft=1024, hop_length=501, window="hann",
                                           center=True, pad_mode="reflect", power=2.0, n_mels=96, htk=True, norm=None)
        ref = librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80.0)
        assert_close(ours[b], torch.from_numpy(ref).float(), atol=1e-3, rtol=0, msg=f"dB item {b}")


def _kaldi_fbank(x: np.ndarray, sr=16000, win=400, hop=160, n_fft=512, n_mels=128, low=20.0, coeff=0.97):
    """kaldi's compute-fbank for one wave, written from its formulas (no dither, htk_compat, no energy)."""
    n_frames = 1 + (len(x) - win) // hop
    i = np.arange(win)
    hanning = 0.5 - 0.5 * np.cos(2 * np.pi * i / (win - 1))
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    lo, hi = mel(low), mel(sr / 2)
    delta = (hi - lo) / (n_mels + 1)
    bank = np.zeros((n_mels, n_fft // 2))
    for m in range(n_mels):
        left, center, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(n_fft // 2):
            v = mel(k * sr / n_fft)
            if left < v < right:
                bank[m, k] = (v - left) / (center - left) if v <= center else (right - v) / (right - center)
    out = np.zeros((n_frames, n_mels))
    for f in range(n_frames):
        frame = x[f * hop:f * hop + win].astype(np.float64)
        frame = frame - frame.mean()
        frame = np.concatenate([[frame[0] - coeff * frame[0]], frame[1:] - coeff * frame[:-1]])
        spec = np.fft.rfft(frame * hanning, n=n_fft)
        power = np.abs(spec[:n_fft // 2]) ** 2
        out[f] = np.log(np.maximum(bank @ power, np.finfo(np.float32).eps))
    return out


def test_ast_matches_kaldi_fbank_formulas():
    x = _wave(2, 5000, dtype=torch.float64)
    cfg = MelConfig.preset("ast", target_frames=None, mean=0.0, std=1.0)
    ours = mel_spectrogram(x, cfg, backend="torch")
    assert ours.shape == (2, 1 + (5000 - 400) // 160, 128)
    for b in range(2):
        assert_close(ours[b], torch.from_numpy(_kaldi_fbank(x[b].numpy())).float(), atol=1e-3, rtol=0, msg=f"item {b}")


def test_ast_preset_pads_and_normalises():
    x = _wave(1, 3000, dtype=torch.float64)
    out = mel_spectrogram(x, "ast", backend="torch")
    assert out.shape == (1, 1024, 128)
    n = 1 + (3000 - 400) // 160
    assert_close(out[0, n:], torch.full_like(out[0, n:], 4.2677393 / (4.5689974 * 2)), msg="zero padding, normalised")


def test_event_preset_shape():
    out = mel_spectrogram(_wave(2, 16000 * 10), "event")
    assert out.shape == (2, 80, 1000) and out.dtype == torch.float32


# Shapes, lengths, dtypes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_lengths_equal_per_item_calls_and_padding_is_never_read(name):
    cfg = SMALL[name]
    x = _wave(3, 2, 1501)
    lengths = torch.tensor([1501, 777, 1200])
    out = mel_spectrogram(poison_padding(x, lengths, dim=2), cfg, lengths=lengths, backend="torch")
    assert not out.isnan().any()
    for b, n in enumerate(lengths.tolist()):
        alone = mel_spectrogram(x[b:b + 1, :, :n], dataclasses.replace(cfg, target_frames=cfg.out_frames(1501)),
                                backend="torch")
        assert_close(out[b:b + 1], alone, atol=1e-4, rtol=1e-4, msg=f"{name} item {b}")


def test_two_dim_input_equals_single_channel():
    x = _wave(2, 900)
    assert torch.equal(mel_spectrogram(x, SMALL["dub"]), mel_spectrogram(x[:, None], SMALL["dub"])[:, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_dtypes_give_float32_close_to_float32_input(dtype):
    x = _wave(2, 1000)
    ref = mel_spectrogram(x, SMALL["event"])
    out = mel_spectrogram(x.to(dtype), SMALL["event"])
    assert out.dtype == torch.float32
    assert_close(out, mel_spectrogram(x.to(dtype).float(), SMALL["event"]) if dtype == torch.float16 else ref,
                 atol=1e-3, rtol=1e-3)


# Masks ------------------------------------------------------------------------------------------


def _masked(out, masks, cfg):
    """(B, C, n_mels, F) bool of the positions masks cover (mel_time layout)."""
    B, n_out = out.shape[0], out.shape[-1]
    rows = torch.arange(cfg.n_mels)
    cols = torch.arange(n_out)
    f = ((rows[None, None] >= masks.freq[..., :1]) & (rows[None, None] < masks.freq[..., 1:])).any(1)
    t = ((cols[None, None] >= masks.time[..., :1]) & (cols[None, None] < masks.time[..., 1:])).any(1)
    return (f[:, :, None] | t[:, None, :]).reshape(B, 1, cfg.n_mels, n_out)


def test_masks_are_per_sample_reproducible_and_within_limits():
    cfg = MelConfig.preset("dub", masks=True, sample_rate=16000, n_fft=128, hop_length=61, n_mels=32)
    x = _wave(6, 2, 4000)
    lengths = torch.tensor([4000, 3000, 2000, 4000, 1000, 2500])
    out, masks = mel_spectrogram(x, cfg, lengths=lengths, generator=torch.Generator().manual_seed(3), return_masks=True)
    again, masks2 = mel_spectrogram(x, cfg, lengths=lengths, generator=torch.Generator().manual_seed(3), return_masks=True)
    assert torch.equal(out, again) and torch.equal(masks.freq, masks2.freq) and torch.equal(masks.time, masks2.time)
    assert len({tuple(m.flatten().tolist()) for m in masks.time}) > 1, "masks must differ across samples"
    valid = torch.tensor([cfg.frames(n) for n in lengths.tolist()])
    widths_f, widths_t = masks.freq.diff(dim=-1)[..., 0], masks.time.diff(dim=-1)[..., 0]
    assert (widths_f >= 0).all() and (widths_f <= 16).all() and (masks.freq[..., 1] <= 32).all()
    assert (widths_t <= torch.floor(valid * 0.5)[:, None]).all() and (masks.time[..., 1] <= valid[:, None]).all()
    plain = mel_spectrogram(x, dataclasses.replace(cfg, masks=False), lengths=lengths)
    hit = _masked(out, masks, cfg).expand_as(out)
    pad = torch.arange(out.shape[-1])[None, :] >= valid[:, None]
    pad = pad[:, None, None, :].expand_as(out)
    assert (out[hit & ~pad] == 0).all()
    assert torch.equal(out[~hit], plain[~hit])


def test_masks_differ_with_seed_and_mean_value():
    cfg = dataclasses.replace(SMALL["constant_pad_mean_mask"], masks=True, freq_masks=2, freq_mask_max=0.5,
                              time_masks=2, time_mask_max=10)
    x = _wave(4, 1200)
    a, ma = mel_spectrogram(x, cfg, generator=torch.Generator().manual_seed(0), return_masks=True)
    _, mb = mel_spectrogram(x, cfg, generator=torch.Generator().manual_seed(1), return_masks=True)
    assert not torch.equal(ma.time, mb.time)
    plain = mel_spectrogram(x, dataclasses.replace(cfg, masks=False))
    hit = _masked(a[:, None], ma, cfg)[:, 0]
    means = plain.mean((1, 2))
    for b in range(4):
        if hit[b].any():
            assert_close(a[b][hit[b]], means[b].expand(int(hit[b].sum())), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch"] + FUSED)
def test_given_masks_equal_drawn_masks(backend):
    cfg = dataclasses.replace(SMALL["constant_pad_mean_mask"], masks=True, freq_masks=2, freq_mask_max=0.5,
                              time_masks=2, time_mask_max=10)
    x, lengths = _wave(3, 2, 1200), torch.tensor([1200, 700, 950])
    drawn, m = mel_spectrogram(x, cfg, lengths=lengths, generator=torch.Generator().manual_seed(4), return_masks=True,
                               backend="torch")
    off = dataclasses.replace(cfg, masks=False)             # given masks apply whether or not config.masks is on
    given = mel_spectrogram(x, off, lengths=lengths, masks=MelMasks(m.freq.int(), m.time), backend=backend)
    assert_close(given, drawn, atol=1e-3, rtol=1e-4, msg=backend)
    other = MelMasks(m.freq, m.time.roll(1, 0))            # another sample's time masks: must differ
    assert not torch.allclose(mel_spectrogram(x, off, lengths=lengths, masks=other, backend=backend), drawn, atol=1e-2)


@pytest.mark.parametrize("masks, err, match", [
    ((torch.zeros(3, 1, 2, dtype=torch.long),), TypeError, "MelMasks"),
    (MelMasks(torch.zeros(2, 1, 2, dtype=torch.long), torch.zeros(3, 1, 2, dtype=torch.long)), ValueError, "masks.freq"),
    (MelMasks(torch.zeros(3, 1, 2, dtype=torch.long), torch.zeros(3, 1, 3, dtype=torch.long)), ValueError, "masks.time"),
    (MelMasks(torch.zeros(3, 1, 2), torch.zeros(3, 1, 2, dtype=torch.long)), TypeError, "integer"),
])
def test_given_masks_bad_input(masks, err, match):
    with pytest.raises(err, match=match):
        mel_spectrogram(_wave(3, 900), SMALL["dub"], masks=masks)


# Autograd, custom op, compile -------------------------------------------------------------------


def test_gradcheck_reference_and_op_backward():
    cfg = MelConfig(n_fft=32, hop_length=8, n_mels=6, log="db", top_db=40.0)
    masks = MelMasks(torch.tensor([[[1, 3]], [[0, 2]]]), torch.tensor([[[2, 4]], [[5, 9]]]))
    x = _wave(2, 2, 100, dtype=torch.float64).requires_grad_(True)
    ref = lambda w: mel_spectrogram_reference(w, cfg, masks=masks, out_dtype=torch.float64)
    assert torch.autograd.gradcheck(ref, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    cfg_masked = dataclasses.replace(cfg, masks=True, freq_mask_max=2, time_mask_max=4)
    out, drawn = mel_spectrogram(x, cfg_masked, generator=torch.Generator().manual_seed(0), return_masks=True)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    expected = mel_spectrogram_reference(x, cfg, masks=drawn, out_dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad(expected, x, g.double())
    assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)


def test_requires_grad_dispatches_to_torch():
    x = _wave(1, 800).requires_grad_(True)
    out = mel_spectrogram(x, SMALL["event"])
    out.sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


@pytest.mark.parametrize("backend", ["torch"] + [b for b in FUSED if b == "triton"])
def test_custom_op_opcheck_and_compile(backend):
    x = _wave(2, 1, 700)
    lengths = torch.tensor([700, 500])
    fm = torch.tensor([[[1, 3]], [[0, 0]]])
    tm = torch.tensor([[[2, 4]], [[1, 5]]])
    kw = dict(_flat(SMALL["dub"]), backend=backend)
    check_custom_op(_mel_op, (x, lengths, fm, tm), kw)


def test_public_function_compiles_fullgraph():
    check_compiles(lambda w: mel_spectrogram(w, SMALL["event"], backend="torch"), _wave(2, 600))


# Fused backends vs torch ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", list(SMALL))
def test_fused_backend_matches_torch(backend, name):
    cfg = dataclasses.replace(SMALL[name], masks=True, freq_masks=2, freq_mask_max=0.3, time_masks=2,
                              time_mask_max=0.3)
    x = _wave(3, 2, 1301)
    lengths = torch.tensor([1301, 640, 1000])
    xp = poison_padding(x, lengths, dim=2)
    ref = mel_spectrogram(x, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5), backend="torch")
    out = mel_spectrogram(xp, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5), backend=backend)
    atol = 1e-3 if cfg.log != "none" else 1e-6
    assert_close(out, ref, atol=atol, rtol=1e-4, msg=f"{backend} {name}")
    assert_deterministic(lambda w: mel_spectrogram(w, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5),
                                                   backend=backend), xp, backward=False)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_fused_backend_dtypes(backend, dtype):
    x = _wave(2, 900).to(dtype)
    ref = mel_spectrogram(x, SMALL["dub"], backend="torch")
    assert_close(mel_spectrogram(x, SMALL["dub"], backend=backend), ref, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", ["event", "dub"])
def test_cpp_own_fft_matches_torch(name, monkeypatch):
    if not has_op("mel_spectrogram_cpu"):
        pytest.skip("C++ extension not built")
    monkeypatch.setenv("AVFAST_MEL_FFT", "own")
    cfg = dataclasses.replace(SMALL[name], masks=True)
    x = _wave(3, 2, 1301)
    lengths = torch.tensor([1301, 640, 1000])
    ref = mel_spectrogram(x, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5), backend="torch")
    out = mel_spectrogram(x, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5), backend="cpp")
    assert_close(out, ref, atol=1e-3, rtol=1e-4)


# Bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("wave, lengths, cfg, err, match", [
    (torch.zeros(1, 1, 1, 800), None, "event", ValueError, "must be \\(B, T\\)"),
    (torch.zeros(2, 800, dtype=torch.int16), None, "event", TypeError, "float16/32/64"),
    (torch.zeros(2, 100), None, MelConfig(n_fft=256, center=False), ValueError, "too short"),
    (torch.zeros(2, 800), torch.tensor([800, 900]), "event", ValueError, "lengths must lie in"),
    (torch.zeros(2, 800), torch.tensor([800]), "event", ValueError, "lengths must be a \\(B,\\)"),
    (torch.full((2, 800), math.nan), None, MelConfig.preset("event", check_finite=True), ValueError, "NaN"),
])
def test_bad_input_raises(wave, lengths, cfg, err, match):
    with pytest.raises(err, match=match):
        mel_spectrogram(wave, cfg, lengths=lengths)


@pytest.mark.parametrize("bad, match", [
    (dict(win_length=1000), "win_length"), (dict(window="blackman"), "window"), (dict(log="ln"), "log"),
    (dict(top_db=80.0), "top_db"), (dict(freq_mask_max=2.0), "freq_mask_max"), (dict(preemphasis=0.97), "kaldi"),
    (dict(mask_value="median"), "mask_value"), (dict(f_max=9000.0), "f_max"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        MelConfig.preset("event", **bad)


def test_unknown_preset_and_backend():
    with pytest.raises(ValueError, match="unknown mel preset"):
        MelConfig.preset("vggish")
    from avfast import BackendError

    with pytest.raises(BackendError):
        mel_spectrogram(torch.zeros(1, 800), "event", backend="nope")


# GPU (run where a CUDA device is present) -------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("name", list(SMALL) + ["event_full"])
def test_gpu_backend_matches_torch(backend, name):
    cfg = MelConfig.preset("event") if name == "event_full" else SMALL[name]
    cfg = dataclasses.replace(cfg, masks=True, freq_masks=2, freq_mask_max=0.3, time_masks=2, time_mask_max=0.3)
    x = _wave(4, 2, 16000).cuda()
    lengths = torch.tensor([16000, 9000, 12345, 4000], device="cuda")
    xp = poison_padding(x, lengths, dim=2)
    ref = mel_spectrogram(x.double(), cfg, lengths=lengths, generator=torch.Generator().manual_seed(5), backend="torch")
    out = mel_spectrogram(xp, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5), backend=backend)
    assert_close(out, ref, atol=2e-3 if cfg.log != "none" else 1e-5, rtol=1e-3, msg=f"{backend} {name}")
    assert_deterministic(lambda w: mel_spectrogram(w, cfg, lengths=lengths, generator=torch.Generator().manual_seed(5),
                                                   backend=backend), xp, backward=False)


@pytest.mark.gpu
def test_gpu_auto_picks_fused_and_compiles():
    x = _wave(2, 16000).cuda()
    from avfast._backend import select

    assert select("mel_spectrogram", x[:, None], torch.zeros(2, dtype=torch.long, device="cuda")).name in ("cuda", "triton")
    check_compiles(lambda w: mel_spectrogram(w, "event", backend="triton"), x, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not has_op("mel_spectrogram_cpu"), reason="avfast._C without the mel kernel")
def test_cpp_private_op_rejects_malformed_index_tensors():
    # The C++ op reads these through raw pointers: wrong shapes must raise, never read out of bounds.
    from avfast.ops.mel import fused_args

    cfg = MelConfig.preset("event")
    wave = torch.randn(2, 1, 4000)
    masks = MelMasks(torch.zeros(2, 0, 2, dtype=torch.long), torch.zeros(2, 0, 2, dtype=torch.long))
    args = list(fused_args(wave, torch.tensor([4000, 4000]), masks, cfg))
    torch.ops.avfast_C.mel_spectrogram_cpu(*args, 0)  # well-formed: runs
    for index, bad, match in ((6, torch.zeros(1, 1, 2, dtype=torch.long), "masks must be"),
                              (7, torch.zeros(2, 1, 2, dtype=torch.int32), "int64"),
                              (1, torch.tensor([4000]), "B entries")):
        broken = list(args)
        broken[index] = bad
        with pytest.raises(RuntimeError, match=match):
            torch.ops.avfast_C.mel_spectrogram_cpu(*broken, 0)
