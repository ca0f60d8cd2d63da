"""Sound-source localisation metrics of the VGG-SS protocol (seed 004 Table 3; public LVS evaluation).

Per sample: the heat map is resized to the ground truth's size (224 x 224, bilinear), min-max
normalised and binarised as ``pred > t`` with ``t`` its median (LVS takes the sorted values' element
``N // 2``, the upper median); the ground truth is the union of the annotated boxes (VGG-SS) or the
annotators' box maps summed, halved and clipped to 1 (Flickr-SoundNet), and

    cIoU = sum(P * G) / (sum(G) + sum(P * (G == 0)))

The reported "cIoU" is the fraction of samples with cIoU >= 0.5 (``ciou_success``) and the AUC is the
trapezoid area under the success rate at thresholds 0, 0.05, ..., 1 (``localization_auc``). Boxes
outside the frame are clipped (as the reference); an empty or inverted box raises, naming the clip.

Box formats:
- ``"vggss"``: ``[x1, y1, x2, y2]`` normalised to [0, 1] of the frame (VGG-SS's ``bbox`` entries);
  at evaluation size S the box covers rows ``int(y1 S) : int(y2 S)`` and columns likewise.
- ``"flickr"``: ``(annotator, [x1, y1, x2, y2])`` in pixels of an ``image_size`` (width, height)
  frame (Flickr-SoundNet's xml boxes), scaled to ``size``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["ciou", "ciou_success", "localization_auc", "box_mask", "reference_maps", "AUC_THRESHOLDS",
           "LocalizationMeter"]

AUC_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))
EVAL_SIZE = 224


def _check_box(box, clip: str, fmt: str) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"{clip}: a {fmt} box needs 4 numbers [x1, y1, x2, y2], got {list(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{clip}: inverted box {list(box)} (x2 < x1 or y2 < y1)")
    if x2 == x1 or y2 == y1:
        raise ValueError(f"{clip}: empty box {list(box)} (zero width or height)")
    return x1, y1, x2, y2


def box_mask(boxes: Sequence, *, fmt: str = "vggss", size: int = EVAL_SIZE, image_size: tuple[int, int] | None = None,
             clip: str = "<clip>") -> torch.Tensor:
    """Ground-truth map ``(size, size)`` float32 of one sample's boxes.

    ``vggss``: boxes ``[[x1, y1, x2, y2], ...]`` in [0, 1]; map = union (0/1).
    ``flickr``: boxes ``[[x1, y1, x2, y2], ...]`` in pixels of ``image_size`` = (width, height), one
    per annotator; map = min(sum of box maps / 2, 1). Boxes are clipped to the frame."""
    if fmt not in ("vggss", "flickr"):
        raise ValueError(f"box format must be 'vggss' or 'flickr' ({fmt!r} given)")
    if len(boxes) == 0:
        raise ValueError(f"{clip}: no boxes (an empty ground truth cannot be scored)")
    if fmt == "flickr":
        if image_size is None:
            raise ValueError(f"{clip}: flickr boxes are in pixels: give image_size=(width, height)")
        sx, sy = size / image_size[0], size / image_size[1]
    else:
        sx = sy = size
    gt = torch.zeros(size, size)
    for box in boxes:
        x1, y1, x2, y2 = _check_box(box, clip, fmt)
        c1, c2 = (min(max(int(v * sx), 0), size) for v in (x1, x2))
        r1, r2 = (min(max(int(v * sy), 0), size) for v in (y1, y2))
        if c2 <= c1 or r2 <= r1:
            raise ValueError(f"{clip}: box {list(box)} lies outside the frame (nothing left after clipping)")
        if fmt == "vggss":
            gt[r1:r2, c1:c2] = 1.0
        else:
            gt[r1:r2, c1:c2] += 1.0
    return (gt / 2).clamp(max=1.0) if fmt == "flickr" else gt


def _binarise(heatmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) heat maps -> (B, H, W) 0/1: resized, min-max normalised, > upper median."""
    h = heatmap.float()
    if tuple(h.shape[-2:]) != tuple(size):
        h = F.interpolate(h[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = h.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    flat = (flat - lo) / (hi - lo).clamp_min(1e-12)
    med = flat.kthvalue(flat.shape[1] // 2 + 1, dim=1, keepdim=True).values
    return (flat > med).float().view_as(h)


def ciou(heatmap: torch.Tensor, gt: torch.Tensor, *, clips: Sequence[str] | None = None) -> torch.Tensor:
    """Per-sample cIoU of heat maps ``(B, h, w)`` against ground-truth maps ``(B, H, W)`` -> ``(B,)``.

    Also takes one sample ``(h, w)``, ``(H, W)`` -> 0-d. ``gt`` from ``box_mask`` (0/1 or Flickr's
    halves); a sample whose ground truth is all zero raises, naming it (``clips``)."""
    single = heatmap.dim() == 2
    hm, g = (heatmap[None], gt[None]) if single else (heatmap, gt)
    if hm.dim() != 3 or g.dim() != 3 or hm.shape[0] != g.shape[0]:
        raise ValueError(f"ciou: heatmap (B, h, w) and gt (B, H, W) with the same B, got {tuple(heatmap.shape)} "
                         f"and {tuple(gt.shape)}")
    g = g.float().to(hm.device)
    area = g.flatten(1).sum(1)
    if bool((area <= 0).any()):
        i = int((area <= 0).nonzero()[0])
        name = clips[i] if clips is not None else f"sample {i}"
        raise ValueError(f"{name}: empty ground-truth map (no box)")
    pred = _binarise(hm, tuple(g.shape[-2:]))
    inter = (pred * g).flatten(1).sum(1)
    outside = (pred * (g == 0)).flatten(1).sum(1)
    out = inter / (area + outside)
    return out[0] if single else out


def ciou_success(cious: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of samples with cIoU >= ``threshold`` (the "cIoU" column of VGG-SS tables)."""
    c = torch.as_tensor(cious, dtype=torch.float64).flatten()
    if c.numel() == 0:
        raise ValueError("ciou_success: no samples")
    return float((c >= threshold).double().mean())


def localization_auc(cious: torch.Tensor, thresholds: Iterable[float] = AUC_THRESHOLDS) -> float:
    """Trapezoid area under the success rate ``mean(cIoU >= t)`` over ``t`` = 0, 0.05, ..., 1."""
    c = torch.as_tensor(cious, dtype=torch.float64).flatten()
    if c.numel() == 0:
        raise ValueError("localization_auc: no samples")
    t = torch.tensor(list(thresholds), dtype=torch.float64)
    rate = (c[None, :] >= t[:, None]).double().mean(1)
    return float(torch.trapezoid(rate, t))


def reference_maps(gt: torch.Tensor, size: tuple[int, int], *, generator: torch.Generator | None = None) -> dict:
    """Maps at a model's resolution ``size = (h, w)`` to read its scores against; gt ``(B, H, W)`` from
    ``box_mask`` -> {name: (B, h, w)}:

    - ``"random"``: uniform noise (``generator`` seeds it);
    - ``"centre"``: a centred Gaussian, ``exp(-(x^2 + y^2) / 0.5)`` on [-1, 1]^2 (the usual prior;
      constant, so scoring 0, on maps of at most 2 x 2);
    - ``"oracle"``: the ground truth averaged into the h x w cells, what a perfect model of that
      resolution outputs. Upsampling smears half a cell past the box and the median threshold keeps
      the smear, so a box of 1/9 of the frame scores 0.22 through a 4 x 4 oracle and 0.34 through a
      7 x 7 one (1.0 at full resolution). The oracle is flat outside the box, which is what lets the
      median threshold drop the outside: a map whose values all differ keeps half the frame, so for a
      box smaller than half the frame its cIoU is at most box area / half the frame (0.22 for 1/9),
      at any resolution."""
    h, w = size
    b = gt.shape[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return {"random": torch.rand(b, h, w, generator=generator),
            "centre": torch.exp(-(xx ** 2 + yy ** 2) / 0.5).expand(b, h, w),
            "oracle": F.adaptive_avg_pool2d(gt.float().cpu()[:, None], (h, w))[:, 0]}


def _summary(c: torch.Tensor, prefix: str = "") -> dict:
    return {f"{prefix}cIoU": ciou_success(c), f"{prefix}AUC": localization_auc(c), f"{prefix}mean_cIoU": float(c.mean())}


class LocalizationMeter:
    """Accumulates per-sample cIoU over batches; ``compute()`` -> {"cIoU", "AUC", "mean_cIoU", "samples"}.

    ``baselines=True`` also scores ``reference_maps`` at each batch's map size on the same boxes and
    adds their ``<name>_cIoU``, ``<name>_AUC`` and ``<name>_mean_cIoU`` (random, centre, oracle)."""

    def __init__(self, baselines: bool = False, seed: int = 0):
        self.values: list[torch.Tensor] = []
        self.baselines: dict[str, list[torch.Tensor]] | None = {} if baselines else None
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, heatmap: torch.Tensor, gt: torch.Tensor, clips: Sequence[str] | None = None) -> torch.Tensor:
        c = ciou(heatmap, gt, clips=clips).detach().cpu().reshape(-1)
        self.values.append(c)
        if self.baselines is not None:
            g = gt.cpu() if gt.dim() == 3 else gt.cpu()[None]
            for name, m in reference_maps(g, tuple(heatmap.shape[-2:]), generator=self._generator).items():
                self.baselines.setdefault(name, []).append(ciou(m, g))
        return c

    def compute(self) -> dict:
        c = torch.cat(self.values) if self.values else torch.zeros(0)
        if c.numel() == 0:
            raise ValueError("LocalizationMeter: no samples")
        out = {**_summary(c), "samples": int(c.numel())}
        for name, values in (self.baselines or {}).items():
            out.update(_summary(torch.cat(values), f"{name}_"))
        return out
