"""AP / mAP against hand-made rankings and sklearn (ties included)."""
import pytest
import torch

from avfast.metrics.multilabel import average_precision, mean_average_precision


def test_hand_made():
    s = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert float(average_precision(s, y)[0]) == pytest.approx((1 + 2 / 3) / 2)
    s = torch.tensor([[0.9], [0.5], [0.5], [0.1]])            # tie: both scored at rank 3
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    assert float(average_precision(s, y)[0]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    two = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    ap = average_precision(torch.rand(2, 2), two)
    assert ap[1].isnan() and mean_average_precision(torch.tensor([[0.9, 0.1], [0.1, 0.2]]), two) == 1.0


def test_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(60, 7, generator=g) * 5).round() / 5
    y = (torch.rand(60, 7, generator=g) > 0.6).float()
    want = torch.tensor([metrics.average_precision_score(y[:, c], s[:, c]) for c in range(7)], dtype=torch.float32)
    torch.testing.assert_close(average_precision(s, y), want)
