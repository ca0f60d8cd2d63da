"""cIoU / AUC of the VGG-SS protocol on hand-made maps and boxes (perfect, disjoint, half)."""
import pytest
import torch

from avfast.metrics.localization import (AUC_THRESHOLDS, LocalizationMeter, box_mask, ciou, ciou_success,
                                         localization_auc, reference_maps)

S = 224


def rect(r1, r2, c1, c2, size=S):
    m = torch.zeros(size, size)
    m[r1:r2, c1:c2] = 1
    return m


def test_perfect_disjoint_half():
    gt = box_mask([[0.25, 0.25, 0.75, 0.5]], fmt="vggss")       # rows 56:112, cols 56:168
    assert torch.equal(gt, rect(56, 112, 56, 168))
    area = 56 * 112
    perfect = gt.clone() * 3 + 1                                   # min-max makes it 0/1 again
    disjoint = rect(150, 220, 0, 100)
    inside_half = rect(56, 112, 56, 112)                           # half of the box, nothing outside
    shifted = rect(56, 112, 112, 224)                              # half inside, as much outside
    got = ciou(torch.stack([perfect, disjoint, inside_half, shifted]), gt.expand(4, S, S))
    want = torch.tensor([1.0, 0.0, (area / 2) / area, (area / 2) / (area + area / 2)])
    torch.testing.assert_close(got, want)
    assert ciou(perfect, gt).dim() == 0


def test_median_binarisation_and_resize():
    # a 7 x 7 map is resized (bilinear) to 224 first; more than half hot: only values above the median count
    gt = rect(0, 224, 0, 112)
    small = torch.zeros(7, 7)
    small[:, :4] = 1.0
    c = float(ciou(small, gt))
    up = torch.nn.functional.interpolate(small[None, None], size=(S, S), mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min())
    med = up.flatten().sort().values[S * S // 2]
    pred = (up > med).float()
    want = float((pred * gt).sum() / (gt.sum() + (pred * (gt == 0)).sum()))
    assert c == pytest.approx(want)


def test_success_and_auc_definitions():
    cious = torch.tensor([1.0, 0.0, 0.5, 1 / 3])
    assert ciou_success(cious) == 0.5                               # 1.0 and 0.5 reach 0.5
    # trapezoid by hand over 0, 0.05, ..., 1
    rates = [sum(float(c) >= t for c in cious) / 4 for t in AUC_THRESHOLDS]
    want = sum((rates[i] + rates[i + 1]) / 2 * 0.05 for i in range(20))
    assert localization_auc(cious) == pytest.approx(want)
    assert localization_auc(torch.ones(5)) == pytest.approx(1.0)
    assert localization_auc(torch.zeros(5)) == pytest.approx(0.025)  # only t = 0 succeeds: half a 0.05 step
    assert len(AUC_THRESHOLDS) == 21 and AUC_THRESHOLDS[-1] == 1.0


def test_flickr_boxes_sum_half_clip():
    boxes = [[0, 0, 128, 128], [64, 64, 192, 192], [0, 0, 64, 64]]     # pixels of a 256 x 256 frame
    gt = box_mask(boxes, fmt="flickr", image_size=(256, 256))
    assert gt[10, 10] == 1.0          # two annotators -> 2 / 2
    assert gt[100, 100] == 1.0        # two annotators
    assert gt[40, 100] == 0.5         # one annotator
    assert gt[200, 200] == 0.0
    assert gt.max() == 1.0            # clipped to 1


def test_box_outside_frame_is_clipped():
    gt = box_mask([[-0.5, 0.5, 0.5, 1.5]], fmt="vggss")
    assert torch.equal(gt, rect(112, 224, 0, 112))


@pytest.mark.parametrize("box,what", [([0.5, 0.2, 0.4, 0.6], "inverted"), ([0.3, 0.3, 0.3, 0.6], "empty"),
                                      ([1.2, 1.2, 1.5, 1.5], "outside the frame")])
def test_bad_boxes_name_the_clip(box, what):
    with pytest.raises(ValueError, match=f"clip_007.*{what}"):
        box_mask([box], clip="clip_007")
    with pytest.raises(ValueError, match="clip_008: no boxes"):
        box_mask([], clip="clip_008")


def test_meter_and_empty_gt():
    meter = LocalizationMeter()
    gt = rect(0, 50, 0, 50)[None]
    meter.update(gt.clone(), gt)
    meter.update(rect(100, 150, 100, 150)[None], gt)
    out = meter.compute()
    assert out["samples"] == 2 and out["cIoU"] == 0.5 and out["mean_cIoU"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="vid_3: empty ground-truth"):
        ciou(torch.rand(1, 7, 7), torch.zeros(1, S, S), clips=["vid_3"])


def test_reference_maps_and_what_coarse_maps_can_score():
    gt = box_mask([[0.0, 0.0, 0.5, 0.5]])[None]                 # the top-left quarter: rows and cols 0:112
    maps = reference_maps(gt, (4, 4), generator=torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"random": (1, 4, 4), "centre": (1, 4, 4),
                                                            "oracle": (1, 4, 4)}
    want = torch.zeros(4, 4)
    want[:2, :2] = 1
    torch.testing.assert_close(maps["oracle"][0], want)
    # bilinear upsampling (56 px per cell) keeps values > 0 up to pixel 139: 140^2 predicted vs a 112^2 box
    assert float(ciou(maps["oracle"], gt)) == pytest.approx(112 ** 2 / 140 ** 2)
    c = maps["centre"][0]
    assert c[1, 1] == c[2, 2] == c.max() and c[0, 0] == c.min()
    small = box_mask([[1 / 3, 1 / 3, 2 / 3, 2 / 3]])[None]      # 1/9 of the frame
    coarse = [float(ciou(reference_maps(small, (r, r))["oracle"], small)) for r in (4, 7, 14)]
    assert coarse[0] < coarse[1] < coarse[2] < 0.5 and coarse[0] == pytest.approx(0.224, abs=0.002)
    assert float(ciou(small, small)) == pytest.approx(1.0)
    # the same box with faint noise outside: the median keeps half the frame, cIoU = area / half = 2/9
    noisy = small + 1e-3 * torch.rand(small.shape, generator=torch.Generator().manual_seed(0))
    assert float(ciou(noisy, small)) == pytest.approx(float(small.mean()) / 0.5, abs=2e-3)


def test_meter_scores_the_baselines_on_the_same_boxes():
    meter = LocalizationMeter(baselines=True)
    gt = torch.stack([box_mask([[0.0, 0.0, 0.5, 0.5]]), box_mask([[0.25, 0.25, 0.75, 0.75]])])
    heat = torch.zeros(2, 4, 4)
    heat[0, :2, :2] = 1
    heat[1, 3, 3] = 1                                           # wrong corner
    meter.update(heat, gt)
    out = meter.compute()
    assert out["mean_cIoU"] == pytest.approx(float(ciou(heat, gt).mean()))
    assert out["oracle_mean_cIoU"] == pytest.approx(float(ciou(reference_maps(gt, (4, 4))["oracle"], gt).mean()))
    assert out["oracle_mean_cIoU"] > out["mean_cIoU"]
    assert out["centre_mean_cIoU"] == pytest.approx(float(ciou(reference_maps(gt, (4, 4))["centre"], gt).mean()))
    assert 0 <= out["random_mean_cIoU"] < 1 and set(out) >= {"random_AUC", "centre_AUC", "oracle_AUC"}
    plain = LocalizationMeter()
    plain.update(heat, gt)
    assert set(plain.compute()) == {"cIoU", "AUC", "mean_cIoU", "samples"}
