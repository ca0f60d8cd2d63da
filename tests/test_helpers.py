"""The shared test helpers must be able to fail: each is checked on a passing and a failing case."""
import pytest
import torch
import torch.distributed as dist

import helpers


def test_assert_close_reports_worst_and_nan():
    a = torch.tensor([1.0, 2.0, 3.0])
    helpers.assert_close(a, a + 1e-7)
    with pytest.raises(AssertionError, match="1/3 entries outside"):
        helpers.assert_close(a, torch.tensor([1.0, 2.5, 3.0]))
    with pytest.raises(AssertionError, match="NaN"):
        helpers.assert_close(torch.tensor([float("nan")]), torch.tensor([0.0]))
    with pytest.raises(AssertionError, match="shape"):
        helpers.assert_close(a, a[:2])
    with pytest.raises(AssertionError, match="entries differ"):
        helpers.assert_close(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_tolerance_table_covers_dtypes():
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        t = helpers.tol(dtype, 2.0)
        assert t["atol"] == 2 * helpers.TOLERANCES[dtype][0]


def test_compare_to_reference_checks_values_and_grads():
    x = torch.randn(5, 3, requires_grad=True)
    helpers.compare_to_reference(lambda t: t.exp().sum(1), lambda t: t.exp().sum(1), [x])
    with pytest.raises(AssertionError, match="output 0"):
        helpers.compare_to_reference(lambda t: t.sum(1) + 1e-3, lambda t: t.sum(1), [x])

    class WrongGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            return g * 3

    with pytest.raises(AssertionError, match="grad of input 0"):
        helpers.compare_to_reference(WrongGrad.apply, lambda t: t * 2, [x])


def test_poison_padding():
    x = torch.zeros(2, 3, 4)
    y = helpers.poison_padding(x, torch.tensor([4, 2]), dim=-1)
    assert not y[0].isnan().any()
    assert y[1, :, 2:].isnan().all() and not y[1, :, :2].isnan().any()


def test_assert_deterministic():
    x = torch.randn(4, requires_grad=True)
    helpers.assert_deterministic(lambda t: t * 2, x)
    with pytest.raises(AssertionError, match="differs"):
        helpers.assert_deterministic(lambda t: t + torch.rand(()), x)


def _allreduce(rank, world_size, base):
    t = torch.tensor([float(rank + base)])
    dist.all_reduce(t)
    return t.item()


def _boom(rank, world_size):
    if rank == 1:
        raise ValueError("rank one fails")
    return rank


def test_spawn_gloo_two_ranks():
    assert helpers.spawn(_allreduce, 2, args=(10,)) == [21.0, 21.0]
    with pytest.raises(AssertionError, match="rank one fails"):
        helpers.spawn(_boom, 2, timeout=60)
