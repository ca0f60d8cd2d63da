"""Audio-visual segmentation metrics with AVSBench's definitions, vectorised and batched over frames.

Binary tasks (S4, MS3): ``mask_iou`` (J) and ``f_score`` (F). Semantic task (AVSS, 71 classes with
background 0): ``miou`` and ``semantic_f_score`` per class, ``fdr`` (false detection rate).
Every function takes any leading dims (``(N, H, W)``, ``(B, T, H, W)``): each ``(H, W)`` is a frame.
``SegmentationMeter`` sums the per-frame terms over batches so that a whole split gives the same
values as one call on all its frames.

AVSBench's rules, as its public evaluation code computes them:

- J: the prediction is binarised (``prob > 0.5``); IoU = |P & G| / (|P | G| + 1e-7). A frame with an
  empty ground truth scores the fraction of pixels that both call background, |~P & ~G| / (H W):
  1 for an empty prediction, ``1 - |P| / (H W)`` otherwise (``empty="avsbench"``, the default);
  ``empty="strict"`` gives 1 or 0 instead.
- F: at 255 thresholds ``linspace(0, 1 - 1e-10, 255)`` (pixel counted when ``prob >= t``), per frame
  precision ``tp / (|P| + 1e-20)`` and recall ``tp / (|G| + 1e-20)``, ``F = (1 + b2) p r / (b2 p + r)``
  (NaN -> 0) with ``b2 = 0.3``; averaged over frames whose ground truth is not empty, then the max
  over thresholds.
- AVSS: per frame and class c, IoU_c = inter / (union + 2.2e-16) and F_c from precision inter/pred and
  recall inter/target (NaN -> 0); each summed over frames and divided by the number of frames whose
  union for c is not empty; classes never seen score 0; mIoU and F are means over all classes.
- FDR (category level): over frames, false detections (a class predicted in a frame whose ground
  truth lacks it) / all detections (classes predicted), background excluded; 0 when nothing is
  predicted. For a binary task the only category is "foreground".
"""
from __future__ import annotations

import torch

__all__ = ["mask_iou", "f_measure_curve", "f_score", "class_areas", "miou", "semantic_f_score", "fdr",
           "SegmentationMeter"]

_IOU_EPS = 1e-7
_PR_EPS = 1e-20
_CLASS_EPS = 2.220446049250313e-16
EMPTY_RULES = ("avsbench", "strict")


def _frames(pred: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and flatten leading dims: -> (N, H*W) each."""
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(f"{name}: pred and target must have the same shape (..., H, W); got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"{name}: pred on {pred.device}, target on {target.device}")
    return pred.reshape(-1, pred.shape[-2] * pred.shape[-1]), target.reshape(-1, target.shape[-2] * target.shape[-1])


def _probabilities(pred: torch.Tensor, logits: bool) -> torch.Tensor:
    if pred.dtype == torch.bool:
        return pred.float()
    return pred.float().sigmoid() if logits else pred.float()


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be mean, sum or none ({reduction!r} given)")


def mask_iou(pred: torch.Tensor, target: torch.Tensor, *, logits: bool = False, threshold: float = 0.5,
             empty: str = "avsbench", reduction: str = "mean") -> torch.Tensor:
    """J: IoU per frame of ``pred > threshold`` against the binary ``target``.

    Args:
        pred: (..., H, W) probabilities (or logits with ``logits=True``, or bool masks).
        target: (..., H, W) binary ground truth (any dtype; nonzero = object).
        empty: rule for frames with an empty ground truth, ``"avsbench"`` or ``"strict"`` (module doc).
        reduction: ``"mean"`` (0-d), ``"sum"`` or ``"none"`` (N,) over the N frames.
    """
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES} ({empty!r} given)")
    p, g = _frames(pred, target, "mask_iou")
    p = _probabilities(p, logits) > threshold
    g = g != 0
    inter = (p & g).sum(1).float()
    union = (p | g).sum(1).float()
    no_object = g.sum(1) == 0
    if empty == "avsbench":
        empty_score = (~p & ~g).sum(1).float() / p.shape[1]
    else:
        empty_score = (p.sum(1) == 0).float()
    iou = torch.where(no_object, empty_score, inter / (union + _IOU_EPS))
    return _reduce(iou, reduction)


def _threshold_buckets(p: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Number of ``thresholds`` (uniform from 0) that are <= each value: a pixel counts at thresholds
    0 .. bucket - 1. Arithmetic for the bulk; ``bucketize`` (exact) only for values within 1e-3 of a
    step, where float rounding could put the arithmetic one off (same result, ~3x faster on CPU)."""
    k = thresholds.numel()
    if k < 2:
        return torch.bucketize(p, thresholds, right=True)
    x = p * ((k - 1) / float(thresholds[-1]))
    floor = x.floor()
    frac = x - floor
    bucket = (floor + 1).clamp_(0, k).long()
    near = (frac < 1e-3) | (frac > 1 - 1e-3)
    bucket[near] = torch.bucketize(p[near], thresholds, right=True)
    return bucket


def f_measure_curve(pred: torch.Tensor, target: torch.Tensor, *, logits: bool = False, beta2: float = 0.3,
                    num_thresholds: int = 255, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame F-measure at AVSBench's thresholds: -> (F (N, K) float32, valid (N,) bool).

    ``valid`` marks frames whose ground truth is not empty (the only ones F averages). Pixels are
    binned by threshold once (``bucketize``) and counted with one ``bincount`` per chunk of frames,
    so the cost is O(N H W) whatever K is.
    """
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1 ({num_thresholds} given)")
    p, g = _frames(pred, target, "f_score")
    thresholds = torch.linspace(0, 1 - 1e-10, num_thresholds, device=p.device)
    k = num_thresholds
    curves = []
    for start in range(0, p.shape[0], chunk):
        pc = _probabilities(p[start:start + chunk], logits)
        gc = g[start:start + chunk] != 0
        n = pc.shape[0]
        bucket = _threshold_buckets(pc, thresholds)
        flat = bucket + (k + 1) * torch.arange(n, device=p.device)[:, None]
        hist_all = torch.bincount(flat.reshape(-1), minlength=n * (k + 1)).view(n, k + 1)
        hist_tp = torch.bincount(flat[gc], minlength=n * (k + 1)).view(n, k + 1)
        # count at threshold j = pixels with bucket > j: reversed cumulative sum from the top bucket
        n_pred = hist_all.flip(1).cumsum(1).flip(1)[:, 1:].float()
        tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:].float()
        n_gt = gc.sum(1, keepdim=True).float()
        prec, rec = tp / (n_pred + _PR_EPS), tp / (n_gt + _PR_EPS)
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
        curves.append(torch.nan_to_num(f, nan=0.0))
    f = torch.cat(curves) if curves else p.new_zeros(0, k)
    return f, g.any(1)


def f_score(pred: torch.Tensor, target: torch.Tensor, *, logits: bool = False, beta2: float = 0.3,
            num_thresholds: int = 255) -> torch.Tensor:
    """F: max over thresholds of the F-measure averaged over frames with a non-empty ground truth.

    pred (..., H, W) probabilities (or logits with ``logits=True``); target (..., H, W) binary.
    Returns a 0-d float32 tensor (0 when every ground truth is empty, as AVSBench).
    """
    f, valid = f_measure_curve(pred, target, logits=logits, beta2=beta2, num_thresholds=num_thresholds)
    if not valid.any():
        return f.new_zeros(())
    return f[valid].mean(0).max()


def _labels(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class scores (..., C, H, W) -> labels (..., H, W); labels pass through."""
    if pred.dim() == target.dim() + 1:
        return pred.argmax(-3)
    return pred


def class_areas(pred: torch.Tensor, target: torch.Tensor, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame and class pixel counts: -> (inter, pred_area, target_area), each (N, C) float64.

    pred: labels (..., H, W) int or class scores (..., C, H, W) (argmax over C); target (..., H, W)
    int labels in [0, num_classes). One ``bincount`` over frame * C + label.
    """
    pred = _labels(pred, target)
    p, g = _frames(pred, target, "class_areas")
    p, g = p.long(), g.long()
    for what, x in (("pred", p), ("target", g)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"class_areas: {what} labels must lie in [0, {num_classes}); got "
                             f"[{int(x.min())}, {int(x.max())}]")
    n = p.shape[0]
    offset = num_classes * torch.arange(n, device=p.device)[:, None]

    def count(x: torch.Tensor) -> torch.Tensor:
        return torch.bincount(x.reshape(-1), minlength=n * num_classes).view(n, num_classes).double()

    return count((p + offset)[p == g]), count(p + offset), count(g + offset)


def _per_class(inter, area_p, area_g, beta2):
    """(IoU (N, C), F (N, C), present (N, C)) of AVSBench's AVSS evaluation."""
    union = area_p + area_g - inter
    iou = inter / (union + _CLASS_EPS)
    prec, rec = inter / area_p, inter / area_g
    f = torch.nan_to_num((1 + beta2) * prec * rec / (beta2 * prec + rec), nan=0.0)
    return iou, f, union > 0


def _class_mean(sums: torch.Tensor, counts: torch.Tensor, per_class: bool) -> torch.Tensor:
    per = torch.nan_to_num(sums / counts, nan=0.0).float()
    return per if per_class else per.mean()


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, *, per_class: bool = False) -> torch.Tensor:
    """AVSS mIoU: per-class IoU summed over frames / frames where the class is in pred or target.

    pred labels (..., H, W) or scores (..., C, H, W); target labels (..., H, W). Returns the mean over
    all ``num_classes`` classes (0-d), or the (C,) per-class values with ``per_class=True``.
    """
    iou, _, present = _per_class(*class_areas(pred, target, num_classes), 0.3)
    return _class_mean(iou.sum(0), present.sum(0), per_class)


def semantic_f_score(pred: torch.Tensor, target: torch.Tensor, num_classes: int, *, beta2: float = 0.3,
                     per_class: bool = False) -> torch.Tensor:
    """AVSS F: per-class F (beta^2 = 0.3) summed over frames / frames where the class is present."""
    _, f, present = _per_class(*class_areas(pred, target, num_classes), beta2)
    return _class_mean(f.sum(0), present.sum(0), per_class)


def _detections(pred: torch.Tensor, target: torch.Tensor, num_classes: int | None, background: int,
                logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(false detections, detections) summed over frames, as 0-d float64 tensors."""
    if num_classes is None:
        p, g = _frames(pred, target, "fdr")
        detected = (_probabilities(p, logits) > 0.5).any(1)
        return (detected & ~(g != 0).any(1)).sum().double(), detected.sum().double()
    _, area_p, area_g = class_areas(pred, target, num_classes)
    detected = area_p > 0
    detected[:, background] = False
    return (detected & (area_g == 0)).sum().double(), detected.sum().double()


def fdr(pred: torch.Tensor, target: torch.Tensor, *, num_classes: int | None = None, background: int = 0,
        logits: bool = False) -> torch.Tensor:
    """False detection rate: false detections / all detections, category level (module doc).

    Binary (``num_classes=None``): pred (..., H, W) probabilities (or logits), a frame "detects"
    when any pixel exceeds 0.5. Semantic: pred labels or scores, target labels; background excluded.
    Returns a 0-d float32 tensor.
    """
    false, detections = _detections(pred, target, num_classes, background, logits)
    return (false / detections.clamp_min(1)).float()


class SegmentationMeter:
    """Sums of AVSBench's per-frame terms over batches; ``compute()`` gives the split's metrics.

    ``num_classes=None``: binary task; ``update(prob (..., H, W), target (..., H, W))``; ``compute()``
    -> {"J", "F", "FDR", "frames"}. Semantic: ``update(scores (..., C, H, W) or labels, labels)``;
    -> {"mIoU", "F", "FDR", "J" (foreground vs background), "frames"}.
    """

    def __init__(self, num_classes: int | None = None, *, beta2: float = 0.3, num_thresholds: int = 255,
                 background: int = 0, empty: str = "avsbench"):
        self.num_classes, self.beta2, self.num_thresholds = num_classes, beta2, num_thresholds
        self.background, self.empty = background, empty
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.iou_sum = 0.0
        self.f_sum = torch.zeros(self.num_thresholds if self.num_classes is None else self.num_classes,
                                 dtype=torch.float64)
        self.f_frames = torch.zeros((), dtype=torch.float64) if self.num_classes is None else \
            torch.zeros(self.num_classes, dtype=torch.float64)
        self.iou_class = torch.zeros(self.num_classes or 0, dtype=torch.float64)
        self.false = self.detections = 0.0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if self.num_classes is None:
            self._update_binary(pred, target)
        else:
            self._update_semantic(pred, target)

    def _update_binary(self, pred, target):
        iou = mask_iou(pred, target, empty=self.empty, reduction="none")
        f, valid = f_measure_curve(pred, target, beta2=self.beta2, num_thresholds=self.num_thresholds)
        false, det = _detections(pred, target, None, self.background, False)
        self.frames += iou.numel()
        self.iou_sum += float(iou.double().sum())
        self.f_sum += f[valid].double().sum(0).cpu()
        self.f_frames += float(valid.sum())
        self.false += float(false)
        self.detections += float(det)

    def _update_semantic(self, pred, target):
        labels = _labels(pred, target)
        inter, area_p, area_g = class_areas(labels, target, self.num_classes)
        iou, f, present = _per_class(inter, area_p, area_g, self.beta2)
        fg_p, fg_g = labels != self.background, target != self.background
        self.frames += inter.shape[0]
        self.iou_sum += float(mask_iou(fg_p, fg_g, empty=self.empty, reduction="sum"))
        self.iou_class += iou.sum(0).cpu()
        self.f_sum += f.sum(0).cpu()
        self.f_frames += present.sum(0).double().cpu()
        false, det = _detections(labels, target, self.num_classes, self.background, False)
        self.false += float(false)
        self.detections += float(det)

    def compute(self) -> dict:
        if self.frames == 0:
            raise ValueError("SegmentationMeter.compute: no frames were added")
        out = {"J": self.iou_sum / self.frames, "FDR": self.false / max(self.detections, 1.0), "frames": self.frames}
        if self.num_classes is None:
            out["F"] = float((self.f_sum / self.f_frames).max()) if self.f_frames > 0 else 0.0
        else:
            out["mIoU"] = float(torch.nan_to_num(self.iou_class / self.f_frames, nan=0.0).mean())
            out["F"] = float(torch.nan_to_num(self.f_sum / self.f_frames, nan=0.0).mean())
        return out
