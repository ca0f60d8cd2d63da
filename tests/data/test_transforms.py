"""Video augmentation (sizes, crops, flips, normalisation, determinism) and the mel audio features."""
import pytest
import torch
import torch.nn.functional as F

from avfast.data import VideoAugment, audio_features


def _frames(t=4, h=90, w=160):
    return torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8)


def test_train_output_shape_and_determinism():
    aug = VideoAugment(short_side=(64, 80), crop=56)
    x = _frames()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == (3, 4, 56, 56) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_matches_resize_then_crop_reference():
    """Eval mode: short side 64, centre crop 64; equals resizing the whole frame then cropping."""
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    smooth = 127 + 100 * torch.sin(xx / 9) * torch.cos(yy / 7)
    x = smooth.to(torch.uint8).expand(2, 3, 96, 128).contiguous()
    aug = VideoAugment(short_side=(64, 64), crop=64, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    out = aug(x)
    ref = F.interpolate(x.float(), size=(64, 85), mode="bilinear", antialias=True)
    left = (85 - 64) // 2
    ref = ref[..., :, left:left + 64].permute(1, 0, 2, 3) / 255
    # crop-then-resize vs resize-then-crop differ by the sub-pixel window offset only
    assert (out - ref).abs().mean() < 0.02


def test_flip_and_normalisation():
    x = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    x[..., :32] = 255  # left half white
    aug = VideoAugment(short_side=(64, 64), crop=64)
    flips = set()
    for seed in range(12):
        out = aug(x, torch.Generator().manual_seed(seed))
        flips.add(bool(out[0, 0, 0, 0] < out[0, 0, 0, -1]))
    assert flips == {True, False}
    out = VideoAugment(short_side=(64, 64), crop=64, train=False)(x)
    assert abs(float(out[0, 0, 0, 0]) - (1 - 0.45) / 0.225) < 1e-4
    assert abs(float(out[0, 0, 0, -1]) - (0 - 0.45) / 0.225) < 1e-4


def test_bad_frames():
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        VideoAugment()(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="crop <= short_side"):
        VideoAugment(short_side=(100, 120), crop=112)(_frames())


def test_audio_features_dub_preset():
    wave = torch.randn(2, 48000) * 0.1
    a = audio_features(wave, generator=torch.Generator().manual_seed(0))
    b = audio_features(wave, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 96, 96) and torch.equal(a, b)
    plain = audio_features(wave, masks=False)
    masked = (a != plain)
    assert masked.any()
    assert torch.equal(masked[0], masked[1])  # the channels of a clip share their masks
