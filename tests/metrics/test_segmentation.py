"""AVSBench metrics on hand-made masks, and the vectorised forms against AVSBench's per-frame loops."""
import math

import pytest
import torch

from avfast.metrics import (SegmentationMeter, class_areas, f_measure_curve, f_score, fdr, mask_iou, miou,
                            semantic_f_score)

B2 = 0.3


def _mask(rows, cols, size=4):
    m = torch.zeros(size, size)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


EMPTY = torch.zeros(4, 4)
LEFT = _mask((0, 4), (0, 2))       # 8 pixels
TOP_LEFT = _mask((0, 2), (0, 2))   # 4 pixels, inside LEFT
TOP = _mask((0, 2), (0, 4))        # 8 pixels, 4 shared with LEFT


def _f(p, r):
    return (1 + B2) * p * r / (B2 * p + r)


# J ------------------------------------------------------------------------------------------------


def test_iou_empty_ground_truth_empty_prediction_scores_one():
    assert mask_iou(EMPTY, EMPTY).item() == 1.0
    assert mask_iou(EMPTY, EMPTY, empty="strict").item() == 1.0


def test_iou_empty_ground_truth_non_empty_prediction():
    # AVSBench: the fraction of pixels both call background, 12 / 16; strict rule: 0
    assert mask_iou(TOP_LEFT, EMPTY).item() == pytest.approx(12 / 16)
    assert mask_iou(TOP_LEFT, EMPTY, empty="strict").item() == 0.0


def test_iou_perfect_and_half_overlap():
    assert mask_iou(LEFT, LEFT).item() == pytest.approx(1.0, abs=1e-6)
    assert mask_iou(TOP_LEFT, LEFT).item() == pytest.approx(4 / 8, abs=1e-6)      # half of the object
    assert mask_iou(TOP, LEFT).item() == pytest.approx(4 / 12, abs=1e-6)          # half of each
    assert mask_iou(torch.zeros(4, 4), LEFT).item() == 0.0


def test_iou_binarises_probabilities_and_logits_at_one_half():
    prob = LEFT * 0.51 + (1 - LEFT) * 0.5          # 0.5 is not > 0.5
    assert mask_iou(prob, LEFT).item() == pytest.approx(1.0, abs=1e-6)
    logits = (LEFT * 2 - 1) * 3
    assert mask_iou(logits, LEFT, logits=True).item() == pytest.approx(1.0, abs=1e-6)


def test_iou_batched_over_frames_and_reductions():
    pred = torch.stack([EMPTY, TOP_LEFT, LEFT, TOP]).view(2, 2, 4, 4)
    gt = torch.stack([EMPTY, EMPTY, LEFT, LEFT]).view(2, 2, 4, 4)
    per_frame = mask_iou(pred, gt, reduction="none")
    assert per_frame.shape == (4,)
    torch.testing.assert_close(per_frame, torch.tensor([1.0, 0.75, 1.0, 1 / 3]), atol=1e-6, rtol=0)
    assert mask_iou(pred, gt).item() == pytest.approx(per_frame.mean().item())
    assert mask_iou(pred, gt, reduction="sum").item() == pytest.approx(per_frame.sum().item())


def test_iou_refuses_bad_shapes_and_rules():
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="empty must be"):
        mask_iou(EMPTY, EMPTY, empty="zero")


# F ------------------------------------------------------------------------------------------------


def test_f_perfect_binary_prediction_is_one():
    assert f_score(LEFT, LEFT).item() == pytest.approx(1.0, abs=1e-6)
    curve, valid = f_measure_curve(LEFT, LEFT)
    assert valid.tolist() == [True]
    # threshold 0 counts every pixel: precision 1/2, recall 1
    assert curve[0, 0].item() == pytest.approx(_f(0.5, 1.0), abs=1e-6)


def test_f_half_overlap():
    assert f_score(TOP_LEFT, LEFT).item() == pytest.approx(_f(1.0, 0.5), abs=1e-6)
    # TOP: precision 1/2, recall 1/2 above threshold 0, but threshold 0 (every pixel: precision 8/16,
    # recall 1) scores higher and the max over thresholds takes it
    curve, _ = f_measure_curve(TOP, LEFT)
    assert curve[0, 1:].tolist() == pytest.approx([_f(0.5, 0.5)] * 254, abs=1e-6)
    assert f_score(TOP, LEFT).item() == pytest.approx(_f(0.5, 1.0), abs=1e-6)


def test_f_skips_frames_with_empty_ground_truth():
    pred = torch.stack([TOP_LEFT, LEFT])
    gt = torch.stack([EMPTY, LEFT])
    assert f_score(pred, gt).item() == pytest.approx(1.0, abs=1e-6)
    assert f_score(torch.stack([EMPTY, TOP]), torch.stack([EMPTY, EMPTY])).item() == 0.0


def _avsbench_f_loop(pred, gt, num=255):
    """AVSBench's Eval_Fmeasure written as its loops: per frame, per threshold."""
    thresholds = torch.linspace(0, 1 - 1e-10, num)
    total, frames = torch.zeros(num, dtype=torch.float64), 0
    for p, g in zip(pred, gt):
        if g.mean() == 0:
            continue
        prec, rec = torch.zeros(num, dtype=torch.float64), torch.zeros(num, dtype=torch.float64)
        for i, t in enumerate(thresholds):
            binary = (p >= t).double()
            tp = (binary * g).sum()
            prec[i], rec[i] = tp / (binary.sum() + 1e-20), tp / (g.sum() + 1e-20)
        f = (1 + B2) * prec * rec / (B2 * prec + rec)
        total += torch.nan_to_num(f, nan=0.0)
        frames += 1
    return (total / frames).max().item() if frames else 0.0


def _avsbench_iou_loop(pred, gt):
    out = []
    for p, g in zip(pred, gt):
        b = (p > 0.5).double()
        if g.sum() == 0:
            out.append(((1 - b) * (1 - g)).sum() / g.numel())
        else:
            out.append((b * g).sum() / (torch.maximum(b, g).sum() + 1e-7))
    return torch.stack(out).mean().item()


def test_vectorised_metrics_equal_avsbench_loops_on_random_frames():
    g = torch.Generator().manual_seed(1)
    gt = (torch.rand(9, 12, 10, generator=g) > 0.6).double()
    gt[2] = 0
    pred = (gt * 0.6 + torch.rand(9, 12, 10, generator=g) * 0.5).clamp(0, 1)
    pred[4, 0, 0] = 1.0                              # exact top value and a tie with a threshold
    pred[5, 1, 1] = thresholds_value = float(torch.linspace(0, 1 - 1e-10, 255)[100])
    assert thresholds_value > 0
    pred[6, :3, 0] = torch.tensor([thresholds_value + 1e-7, thresholds_value - 1e-7, 0.0])
    pred[7, 0, :2] = torch.tensor([1.0 - 1e-10, 0.999])
    assert f_score(pred.float(), gt).item() == pytest.approx(_avsbench_f_loop(pred.float(), gt), abs=1e-6)
    assert mask_iou(pred, gt).item() == pytest.approx(_avsbench_iou_loop(pred, gt), abs=1e-6)
    # chunking over frames changes nothing
    a, _ = f_measure_curve(pred, gt, chunk=2)
    b, _ = f_measure_curve(pred, gt, chunk=64)
    torch.testing.assert_close(a, b)


# AVSS: per-class mIoU and F, FDR --------------------------------------------------------------------


def test_class_areas_from_scores_and_labels_agree():
    labels = torch.tensor([[[0, 1], [2, 2]]])
    target = torch.tensor([[[0, 1], [1, 2]]])
    scores = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    for pred in (labels, scores):
        inter, area_p, area_g = class_areas(pred, target, 3)
        assert inter.tolist() == [[1, 1, 1]]
        assert area_p.tolist() == [[1, 1, 2]]
        assert area_g.tolist() == [[1, 2, 1]]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        class_areas(labels + 1, target, 3)


def test_miou_and_f_per_class_on_hand_made_frames():
    # frame 1: class 1 perfect, background perfect; frame 2: class 1 half of the object, class 2 missed
    bg_1 = torch.tensor([[0, 0], [1, 1]])
    pred = torch.stack([bg_1, torch.tensor([[1, 0], [0, 0]])])
    target = torch.stack([bg_1, torch.tensor([[1, 1], [2, 0]])])
    per = miou(pred, target, 3, per_class=True)
    # class 0: frame 1 IoU 1, frame 2 pred {01, 10, 11} vs gt {11}: 1/3 -> (1 + 1/3) / 2
    # class 1: frame 1 IoU 1, frame 2 1/2 -> 3/4; class 2: frame 2 only, IoU 0 -> 0
    torch.testing.assert_close(per, torch.tensor([2 / 3, 3 / 4, 0.0]), atol=1e-6, rtol=0)
    assert miou(pred, target, 3).item() == pytest.approx((2 / 3 + 3 / 4) / 3, abs=1e-6)
    f = semantic_f_score(pred, target, 3, per_class=True)
    expected = torch.tensor([(1 + _f(1 / 3, 1.0)) / 2, (1 + _f(1.0, 0.5)) / 2, 0.0])
    torch.testing.assert_close(f, expected, atol=1e-6, rtol=0)
    # a class never seen in pred or target scores 0 and still counts in the mean
    assert miou(pred, target, 4).item() == pytest.approx((2 / 3 + 3 / 4) / 4, abs=1e-6)


def test_fdr_semantic_and_binary():
    target = torch.stack([torch.tensor([[0, 1], [0, 0]]), torch.tensor([[0, 2], [0, 0]])])
    pred = torch.stack([torch.tensor([[0, 1], [3, 0]]), torch.tensor([[0, 2], [0, 0]])])
    # detections (background excluded): {1, 3} and {2}; false: class 3 in frame 1 -> 1 / 3
    assert fdr(pred, target, num_classes=4).item() == pytest.approx(1 / 3)
    assert fdr(target, target, num_classes=4).item() == 0.0
    # binary: frames with any predicted pixel are detections; false when the ground truth is empty
    assert fdr(torch.stack([TOP_LEFT, LEFT, EMPTY]), torch.stack([EMPTY, LEFT, LEFT])).item() == pytest.approx(1 / 2)
    assert fdr(EMPTY, LEFT).item() == 0.0


def test_meter_over_batches_equals_one_call():
    g = torch.Generator().manual_seed(3)
    gt = (torch.rand(10, 8, 8, generator=g) > 0.5).float()
    gt[3] = 0
    prob = (gt * 0.5 + torch.rand(10, 8, 8, generator=g) * 0.6).clamp(0, 1)
    meter = SegmentationMeter()
    for i in range(0, 10, 3):
        meter.update(prob[i:i + 3], gt[i:i + 3])
    out = meter.compute()
    assert out["frames"] == 10
    assert out["J"] == pytest.approx(mask_iou(prob, gt).item(), abs=1e-6)
    assert out["F"] == pytest.approx(f_score(prob, gt).item(), abs=1e-6)
    assert out["FDR"] == pytest.approx(fdr(prob, gt).item(), abs=1e-6)

    labels = torch.randint(0, 5, (6, 8, 8), generator=g)
    target = torch.where(torch.rand(6, 8, 8, generator=g) > 0.3, labels, torch.zeros_like(labels))
    sem = SegmentationMeter(num_classes=5)
    sem.update(labels[:4], target[:4])
    sem.update(labels[4:], target[4:])
    out = sem.compute()
    assert out["mIoU"] == pytest.approx(miou(labels, target, 5).item(), abs=1e-6)
    assert out["F"] == pytest.approx(semantic_f_score(labels, target, 5).item(), abs=1e-6)
    assert out["FDR"] == pytest.approx(fdr(labels, target, num_classes=5).item(), abs=1e-6)
    assert math.isfinite(out["J"])
    with pytest.raises(ValueError, match="no frames"):
        SegmentationMeter().compute()
