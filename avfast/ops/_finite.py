"""The NaN/inf row check the ops run on their inputs (outside torch.compile)."""
from __future__ import annotations

import torch


def first_nonfinite_row(t: torch.Tensor) -> tuple[int, ...] | None:
    """Index (all dims but the last) of the first row of ``t`` holding NaN or inf, or None.

    One summing pass decides the common all-finite case (NaN/inf make the sum non-finite); only then
    (or when a huge finite sum overflows) are the rows themselves checked.
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))):
        return None
    bad = ~torch.isfinite(t).all(-1)
    return tuple(bad.nonzero()[0].tolist()) if bool(bad.any()) else None
