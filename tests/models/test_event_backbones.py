"""Seed 004 Table 1: every layer's output shape at full size (meta device), and small-size forward."""
import pytest
import torch

from avfast.models.event_backbones import (AUDIO_TABLE, VIDEO_TABLE, EventBackboneConfig, event_audio_net,
                                           event_video_net, layer_shapes)

# The seed's "Output" column (fc8 / fc9 "100 x 1": the 10 x 10 grid read as 100 steps x 1 mel).
AUDIO_OUT = {
    "conv1": (10, 50, 80), "conv2": (10, 50, 40), "maxpool2": (10, 50, 19), "conv3": (10, 50, 19),
    "maxpool3": (10, 24, 9), "conv4": (10, 24, 9), "conv5": (10, 24, 9), "conv6": (10, 24, 9),
    "maxpool6": (10, 11, 4), "conv7": (10, 10, 1), "fc8": (10, 10, 1), "fc9": (10, 10, 1),
}
VIDEO_OUT = {**{f"conv{i}": (100, 56, 56) for i in range(1, 6)},
             **{n: (100, 28, 28) for n in ("conv6", "conv7", "res-conv8", "conv9", "conv10")},
             **{n: (100, 14, 14) for n in ("conv11", "conv12", "res-conv13", "conv14", "conv15")},
             **{n: (100, 7, 7) for n in ("conv16", "conv17", "res-conv18", "conv19", "conv20")},
             "avgpool": (100, 1, 1)}
AUDIO_FILTERS = {"conv1": 64, "conv2": 64, "conv3": 192, "conv4": 256, "conv5": 256, "conv6": 256,
                 "conv7": 512, "fc8": 512, "fc9": 512}


def test_audio_table_full_size_meta():
    with torch.device("meta"):
        net = event_audio_net()
        shapes = layer_shapes(net, torch.empty(2, 1, 10, 100, 80))
        out = net(torch.empty(2, 1000, 80))
    assert list(shapes) == [r[0] for r in AUDIO_TABLE]
    for name, want in AUDIO_OUT.items():
        assert shapes[name] == want, name
    for name, filters in AUDIO_FILTERS.items():
        assert getattr(net, name)[0].out_channels == filters, name
        assert isinstance(getattr(net, name)[1], torch.nn.BatchNorm3d) and isinstance(getattr(net, name)[2], torch.nn.ReLU)
    assert tuple(out.shape) == (2, 100, 512)  # fc9 "100 x 1": 512-d per 100 ms step


def test_video_table_full_size_meta():
    with torch.device("meta"):
        net = event_video_net()
        shapes = layer_shapes(net, torch.empty(1, 3, 100, 112, 112))
        out = net(torch.empty(1, 3, 100, 112, 112))
    assert set(shapes) == set(VIDEO_OUT)
    for name, want in VIDEO_OUT.items():
        assert shapes[name] == want, name
    assert tuple(out.shape) == (1, 100, 512)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == len(VIDEO_TABLE) == 20
    # every table row's filters, kernel, stride, padding (table order: blocks' conv_a, conv_b, residual)
    got = sorted((m.out_channels, m.kernel_size, m.stride, m.padding) for m in convs)
    assert got == sorted((f, k, s, p) for _, f, k, s, p in VIDEO_TABLE)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 20


def test_small_forward_and_errors():
    torch.manual_seed(0)
    a = event_audio_net(segments=2, width=0.0625)
    v = event_video_net(frames=20, frame_size=32, width=0.0625)
    assert a(torch.randn(2, 200, 80)).shape == (2, 20, 32)
    assert v(torch.randn(2, 3, 20, 32, 32)).shape == (2, 20, 32)
    with pytest.raises(ValueError, match="mel must be"):
        a(torch.randn(2, 100, 80))
    with pytest.raises(ValueError, match="frames must be"):
        v(torch.randn(2, 3, 20, 48, 48))
    with pytest.raises(ValueError, match="multiple of 16"):
        EventBackboneConfig(frame_size=50)
    x = torch.randn(2, 200, 80)
    a.eval()
    steps, tapped = a.forward_with_tap(x, "maxpool3")
    assert torch.equal(steps, a(x)) and tapped.shape == (2, 12, 2, 24, 9)
    assert a.tap_shape("maxpool3") == (12, 24, 9) and a.tap_shape("fc9") == (32, 10, 1)
    with pytest.raises(ValueError, match="no row 'conv99'"):
        a.tap_shape("conv99")
    with pytest.raises(ValueError, match="no row 'conv99'"):
        a.forward_with_tap(torch.randn(2, 200, 80), "conv99")


def test_local_weights_strict(tmp_path):
    a = event_audio_net(segments=1, width=0.0625)
    path = tmp_path / "a.pt"
    torch.save(a.state_dict(), path)
    b = event_audio_net(segments=1, width=0.0625, weights=path)
    assert torch.equal(b.conv1[0].weight, a.conv1[0].weight)
    with pytest.raises(ValueError, match="missing keys|shape mismatch"):
        event_audio_net(segments=1, width=0.125, weights=path)
