"""Question-answering accuracy per question type, as the seed 003 (MUSIC-AVQA) results table.

Columns: Audio (Counting, Comparative, Avg), Visual (Counting, Location, Avg), Audio-Visual
(Existential, Location, Counting, Comparative, Temporal, Avg) and All (Avg). Averages are over the
questions of the group (question-weighted, as the public evaluation), in percent.
"""
from __future__ import annotations

import torch

from avfast.data.avqa import QUESTION_TYPES

__all__ = ["qa_accuracy", "format_qa_table", "QA_COLUMNS"]

MODALITIES = ("Audio", "Visual", "Audio-Visual")
QA_COLUMNS = tuple(f"{m}/{k}" for m, k in QUESTION_TYPES) + tuple(f"{m}/Avg" for m in MODALITIES) + ("All/Avg",)


def qa_accuracy(pred: torch.Tensor, answer: torch.Tensor, qtype: torch.Tensor) -> dict:
    """pred, answer, qtype (N,) integer tensors -> {"Audio/Counting": %, ..., "Audio/Avg": %, "All/Avg": %,
    "count/<column>": n}. Types without questions are NaN (and their counts 0)."""
    if not (pred.shape == answer.shape == qtype.shape) or pred.dim() != 1:
        raise ValueError(f"qa_accuracy: pred, answer, qtype must be (N,), got {tuple(pred.shape)}, "
                         f"{tuple(answer.shape)}, {tuple(qtype.shape)}")
    if qtype.numel() and (int(qtype.min()) < 0 or int(qtype.max()) >= len(QUESTION_TYPES)):
        raise ValueError(f"qa_accuracy: qtype must index QUESTION_TYPES (0..{len(QUESTION_TYPES) - 1})")
    correct = (pred == answer).double()
    groups = {f"{m}/{k}": qtype == i for i, (m, k) in enumerate(QUESTION_TYPES)}
    for m in MODALITIES:
        groups[f"{m}/Avg"] = torch.isin(qtype, torch.tensor([i for i, t in enumerate(QUESTION_TYPES) if t[0] == m],
                                                            device=qtype.device))
    groups["All/Avg"] = torch.ones_like(qtype, dtype=torch.bool)
    out = {}
    for name in QA_COLUMNS:
        sel = groups[name]
        n = int(sel.sum())
        out[name] = float(correct[sel].mean() * 100) if n else float("nan")
        out[f"count/{name}"] = n
    return out


def format_qa_table(results: dict[str, dict]) -> str:
    """Rows ``{method: qa_accuracy(...)}`` as the seed's table (text, 2 decimals)."""
    head = ["Method"] + [c.replace("Audio-Visual", "AV") for c in QA_COLUMNS]
    rows = [head] + [[name] + [f"{r[c]:.2f}" for c in QA_COLUMNS] for name, r in results.items()]
    width = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, width)) for row in rows)
