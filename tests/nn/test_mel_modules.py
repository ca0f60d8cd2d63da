"""avfast.nn MelSpectrogram, SpecAugment, AstNoise, Mixup."""
import torch

from avfast.nn import AstNoise, MelSpectrogram, Mixup, SpecAugment
from avfast.ops import MelConfig, mel_spectrogram


def test_mel_module_masks_only_in_training():
    m = MelSpectrogram("dub", masks=True, sample_rate=16000, n_fft=128, hop_length=64, n_mels=16)
    x = torch.randn(2, 4000)
    plain = mel_spectrogram(x, MelConfig.preset("dub", sample_rate=16000, n_fft=128, hop_length=64, n_mels=16))
    assert torch.equal(m.eval()(x), plain)
    assert not torch.equal(m.train()(x, generator=torch.Generator().manual_seed(0)), plain)


def test_spec_augment_per_sample_within_lengths():
    spec = torch.randn(4, 2, 20, 50)
    aug = SpecAugment(2, 5, 2, 0.2)
    out, masks = aug(spec, frame_lengths=torch.tensor([50, 30, 20, 10]), generator=torch.Generator().manual_seed(1),
                     return_masks=True)
    assert (masks.time[..., 1] <= torch.tensor([50, 30, 20, 10])[:, None]).all()
    assert ((masks.time[..., 1] - masks.time[..., 0]) <= torch.tensor([10, 6, 4, 2])[:, None]).all()
    changed = (out != spec)
    assert torch.equal(changed[:, 0], changed[:, 1]), "channels share masks"
    assert torch.equal(aug.eval()(spec), spec)


def test_ast_noise_and_mixup():
    x = torch.zeros(3, 100, 8)
    y = AstNoise()(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and (y >= 0).all() and (y <= 0.1).all() and y.sum() > 0
    wave, labels = torch.randn(4, 1000), torch.eye(4)
    mixed, mixed_labels, lam = Mixup(p=1.0)(wave, labels, generator=torch.Generator().manual_seed(0))
    assert mixed.shape == wave.shape and torch.allclose(mixed_labels.sum(1), torch.ones(4))
    assert ((lam > 0) & (lam < 1)).all()
