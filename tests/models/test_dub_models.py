"""Seed-001 encoders and DubModel: output shapes, the papers' sizes, parameter counts, errors."""
from __future__ import annotations

import pytest
import torch

from avfast.models import (DubModel, ProjectionHead, acoustic_resnet50, acoustic_resnet_tiny, build_dub_model,
                           count_parameters, x3d_m, x3d_tiny)
from avfast.models.encoders import build_audio_encoder, build_video_encoder, stage_shapes


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_x3d_m_matches_the_published_architecture():
    model = x3d_m()
    # X3D-M: 3.79M parameters with its 400-class Kinetics classifier (2048 x 400 + 400)
    assert _params(model) + 2048 * 400 + 400 == pytest.approx(3.79e6, rel=0.005)
    shapes = stage_shapes(model, torch.zeros(1, 3, 2, 224, 224))  # 2 of the 16 frames: time is not strided
    assert shapes == [(1, 24, 2, 112, 112), (1, 24, 2, 56, 56), (1, 48, 2, 28, 28), (1, 96, 2, 14, 14),
                      (1, 192, 2, 7, 7)]
    assert [len(s) for s in model.stages] == [3, 5, 11, 7]
    assert model.conv5[0].out_channels == 432


def test_acoustic_resnet50_shapes_and_feature_size():
    model = acoustic_resnet50()
    assert [len(s) for s in model.stages] == [3, 4, 6, 3] and model.feature_dim == 1024
    # 3 s at 48 kHz, hop 501 -> 288 frames of 96 mel bins, pseudo-stereo
    shapes = stage_shapes(model, torch.zeros(1, 2, 96, 288))
    assert shapes[-1] == (1, 1024, 12, 36)
    assert _params(model) == pytest.approx(4.95e6, rel=0.01)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_tiny_encoders_forward_backward(norm):
    v, a = x3d_tiny(norm=norm), acoustic_resnet_tiny(norm=norm)
    out_v = v(torch.randn(3, 3, 4, 32, 48))
    out_a = a(torch.randn(3, 2, 32, 50))
    assert out_v.shape == (3, v.feature_dim) and out_a.shape == (3, a.feature_dim)
    (out_v.sum() + out_a.sum()).backward()
    assert all(p.grad is not None for p in a.parameters())
    assert a(torch.randn(3, 32, 50)).shape == (3, a.feature_dim)  # mono duplicated to pseudo-stereo


def test_dub_model_embeddings_are_unit_norm():
    model = build_dub_model("x3d_tiny", "acoustic_resnet_tiny", embed_dim=32)
    model.eval()
    z = model(video=torch.randn(2, 3, 4, 32, 32), audio_p=torch.randn(2, 2, 32, 40),
              video_s=torch.randn(2, 3, 4, 32, 32), audio_s=torch.randn(2, 2, 32, 40))
    assert set(z) == {"v", "a_p", "v_s", "a_s"}
    for t in z.values():
        assert t.shape == (2, 32) and t.dtype == torch.float32
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    assert count_parameters(model)["total"] == _params(model)


def test_audio_sharing_modes_parameter_counts_and_outputs():
    """Seed 001 B.3: one audio backbone, separate primary / secondary heads (the default)."""
    torch.manual_seed(0)
    kw = dict(video="x3d_tiny", audio="acoustic_resnet_tiny", embed_dim=32)
    models = {mode: build_dub_model(**kw, audio_sharing=mode).eval() for mode in ("backbone", "all", "none")}
    assert build_dub_model(**kw).audio_sharing == "backbone"
    enc = _params(acoustic_resnet_tiny())
    head = _params(ProjectionHead(acoustic_resnet_tiny().feature_dim, 32))
    video = _params(models["all"].video)
    counts = {mode: count_parameters(m) for mode, m in models.items()}
    assert counts["all"]["total"] == video + enc + head and set(counts["all"]) == {"video", "audio", "total"}
    assert counts["backbone"]["total"] == video + enc + 2 * head and counts["backbone"]["audio_s_head"] == head
    assert counts["none"]["total"] == video + 2 * (enc + head) and counts["none"]["audio_s"] == enc + head
    a, b = torch.randn(3, 2, 32, 40), torch.randn(3, 2, 32, 40)
    for mode, m in models.items():
        z = m(audio_p=a, audio_s=b)
        torch.testing.assert_close(z["a_p"], m(audio_p=a)["a_p"])  # one backbone call == two (eval mode)
        torch.testing.assert_close(z["a_s"], m(audio_s=b)["a_s"])
        same = torch.allclose(m(audio_s=a)["a_s"], z["a_p"], atol=1e-5)
        assert same == (mode == "all"), mode  # separate heads (backbone) or towers (none) differ
    bb = models["backbone"]
    # the shared backbone: secondary output = its own head on the primary backbone's features
    torch.testing.assert_close(bb(audio_s=b)["a_s"],
                               torch.nn.functional.normalize(bb.audio_s_head(bb.features_audio(b)), dim=-1))
    assert bb.features_audio(a).shape == (3, acoustic_resnet_tiny().feature_dim)
    with pytest.raises(ValueError, match="audio_sharing"):
        build_dub_model(**kw, audio_sharing="heads")


def test_checkpoints_of_other_sharing_modes_convert_or_refuse():
    torch.manual_seed(0)
    kw = dict(video=None, audio="acoustic_resnet_tiny", embed_dim=16)
    a = torch.randn(2, 2, 32, 40)
    old_all = build_dub_model(**kw, audio_sharing="all").eval()
    for mode in ("backbone", "none"):  # one head for both audios converts exactly
        m = build_dub_model(**kw, audio_sharing=mode).eval()
        m.load_state_dict(old_all.state_dict())
        torch.testing.assert_close(m(audio_s=a)["a_s"], old_all(audio_s=a)["a_s"])
    old_none = build_dub_model(**kw, audio_sharing="none")
    for mode in ("backbone", "all"):  # two towers cannot become one backbone
        with pytest.raises(RuntimeError, match="audio_sharing=none"):
            build_dub_model(**kw, audio_sharing=mode).load_state_dict(old_none.state_dict())
    with pytest.raises(RuntimeError, match="audio_sharing=backbone"):
        build_dub_model(**kw, audio_sharing="none").load_state_dict(build_dub_model(**kw).state_dict())


def test_full_size_dub_model_parameter_counts():
    model = build_dub_model(video_kwargs={"feature_dim": 1024})
    counts = count_parameters(model)
    head = lambda d: d * d + 2 * d + d * 512 + 512  # noqa: E731  Linear(d, d) + BN + Linear(d, 512)
    assert counts["video"] == _params(x3d_m(feature_dim=1024)) + head(1024)
    assert counts["audio"] == _params(acoustic_resnet50()) + head(1024)  # the shared 1024-d backbone
    assert counts["audio_s_head"] == head(1024)


def test_projection_head_and_bad_inputs():
    assert ProjectionHead(64, 512)(torch.randn(4, 64)).shape == (4, 512)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        x3d_tiny()(torch.randn(2, 4, 4, 32, 32))
    with pytest.raises(ValueError, match="n_mels"):
        acoustic_resnet_tiny()(torch.randn(2, 3, 32, 40))
    with pytest.raises(ValueError, match="unknown video encoder"):
        build_video_encoder("x3d_l")
    with pytest.raises(ValueError, match="unknown audio encoder"):
        build_audio_encoder("resnet18")
    with pytest.raises(ValueError, match="norm"):
        x3d_tiny(norm="layer")
    assert isinstance(build_dub_model(None, "acoustic_resnet_tiny"), DubModel)


def test_freq_coords_sees_absolute_pitch():
    # a horizontal stripe at two mel heights: identical to a pooled plain net away from the edges,
    # told apart once the mel-position channel is added
    torch.manual_seed(0)
    low, high = torch.zeros(1, 2, 48, 40), torch.zeros(1, 2, 48, 40)
    low[:, :, 20], high[:, :, 28] = 1.0, 1.0
    net = acoustic_resnet_tiny(freq_coords=True, norm="group").eval()
    assert net(torch.randn(3, 2, 48, 40)).shape == (3, net.feature_dim)
    assert net(torch.randn(3, 48, 40)).shape == (3, net.feature_dim)  # mono input too
    assert not torch.allclose(net(low), net(high), atol=1e-4)
