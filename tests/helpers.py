"""Shared test rules for avfast (frozen API: the op, data and model tests build on these).

- ``TOLERANCES`` / ``tol(dtype)``: per-dtype atol/rtol.
- ``assert_close``: allclose with a readable report (worst element, NaN/inf counts).
- ``compare_to_reference``: a backend vs the torch reference, values and gradients.
- ``poison_padding``: NaN (or any value) past each sample's length.
- ``assert_deterministic``: re-run, require bitwise-equal outputs (and grads).
- ``check_custom_op``: ``torch.library.opcheck`` + ``torch.compile(fullgraph=True)`` vs eager.
- ``spawn``/``free_port``: run a function in N gloo processes, collect each rank's result.
- ``backends_for(op, device)``: the backends that can run on this machine, for parametrize.
"""
from __future__ import annotations

import contextlib
import os
import socket
import traceback
from typing import Any, Callable, Sequence

import torch

# atol, rtol for comparing a backend computed in `dtype` against an fp32/fp64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-7),
    torch.float32: (1e-5, 1.3e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """``dict(atol=..., rtol=...)`` for ``dtype``, both multiplied by ``scale``."""
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol * scale, "rtol": rtol * scale}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float | None = None,
                 rtol: float | None = None, dtype: torch.dtype | None = None, msg: str = "",
                 equal_nan: bool = False) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, with a useful report.

    Tolerances default to ``tol(dtype or actual.dtype)``. Integer/bool tensors must be equal.
    Shapes must match exactly. Both are compared in float64 on CPU.
    """
    assert isinstance(actual, torch.Tensor), f"{msg}: expected a tensor, got {type(actual)}"
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    if not actual.dtype.is_floating_point and not actual.is_complex():
        mismatch = (actual.cpu() != expected.cpu())
        assert not mismatch.any(), (
            f"{msg}: {int(mismatch.sum())}/{mismatch.numel()} entries differ; first at "
            f"{tuple(mismatch.nonzero()[0].tolist())}"
        )
        return
    d_atol, d_rtol = TOLERANCES.get(dtype or actual.dtype, TOLERANCES[torch.float32])
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    problems = []
    for name, t in (("actual", a), ("expected", e)):
        n_nan, n_inf = int(t.isnan().sum()), int(t.isinf().sum())
        if (n_nan and not equal_nan) or n_inf:
            problems.append(f"{name} has {n_nan} NaN and {n_inf} inf")
    both_nan = a.isnan() & e.isnan() if equal_nan else torch.zeros_like(a, dtype=torch.bool)
    err = (a - e).abs().masked_fill(both_nan, 0)
    bad = (err > atol + rtol * e.abs()) | (a.isnan() ^ e.isnan())
    if bad.any() or problems:
        where = tuple(bad.nonzero()[0].tolist()) if bad.any() else ()
        worst = int(err.nan_to_num(float("inf")).argmax()) if err.numel() else 0
        widx = tuple(torch.unravel_index(torch.tensor(worst), err.shape)) if err.numel() else ()
        widx = tuple(int(i) for i in widx)
        raise AssertionError(
            f"{msg}: {int(bad.sum())}/{bad.numel()} entries outside atol={atol:g} rtol={rtol:g}"
            + (f"; {'; '.join(problems)}" if problems else "")
            + (f"\n  first at {where}: actual {a[where].item():.8g} expected {e[where].item():.8g}" if where else "")
            + (f"\n  max abs err {err.max().item():.4g} at {widx}" if err.numel() else "")
        )


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _clone_inputs(inputs: Sequence[Any], dtype: torch.dtype | None) -> list:
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
            y = x.detach().clone()
            if dtype is not None:
                y = y.to(dtype)
            y.requires_grad_(x.requires_grad)
            out.append(y)
        else:
            out.append(x)
    return out


def compare_to_reference(fn: Callable, ref_fn: Callable, inputs: Sequence[Any], *, dtype: torch.dtype | None = None,
                         ref_dtype: torch.dtype | None = torch.float64, grad: bool = True,
                         tol_scale: float = 1.0, grad_tol_scale: float | None = None, msg: str = "",
                         kwargs: dict | None = None, seed: int = 0) -> tuple:
    """Run ``fn`` and ``ref_fn`` on copies of ``inputs`` and compare outputs and gradients.

    Float inputs are cast to ``dtype`` for ``fn``; ``ref_fn`` gets those rounded values cast to
    ``ref_dtype`` (None keeps them); inputs with ``requires_grad`` get gradients compared when ``grad``. Outputs may be a tensor
    or a tuple (integer outputs must match exactly; None entries are skipped). The backward uses
    the same random upstream gradient for both sides. Tolerances: ``tol(dtype, tol_scale)`` for
    values, ``grad_tol_scale`` (default ``tol_scale``) for gradients. Returns (outputs, ref_outputs).
    """
    kwargs = kwargs or {}
    dtype = dtype or next((x.dtype for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()), torch.float32)
    test_in = _clone_inputs(inputs, dtype)
    # the reference sees the inputs the tested side sees: rounded to ``dtype`` first (a half-precision
    # test must not be charged the rounding of its own inputs), then raised to ``ref_dtype``
    ref_in = _clone_inputs(test_in, ref_dtype)
    out, ref = _as_tuple(fn(*test_in, **kwargs)), _as_tuple(ref_fn(*ref_in, **kwargs))
    assert len(out) == len(ref), f"{msg}: {len(out)} outputs vs reference's {len(ref)}"
    for i, (o, r) in enumerate(zip(out, ref)):
        if o is None or r is None:
            assert o is None and r is None, f"{msg}: output {i} is None on one side only"
            continue
        assert_close(o, r.to(o.dtype) if not o.dtype.is_floating_point else r, **tol(dtype, tol_scale) if o.dtype.is_floating_point else {},
                     msg=f"{msg} output {i}")
    if grad:
        diff = [(o, r) for o, r in zip(out, ref) if o is not None and o.requires_grad]
        if diff:
            gen = torch.Generator().manual_seed(seed)
            grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o, _ in diff]
            torch.autograd.backward([o for o, _ in diff], [g.to(o.dtype).to(o.device) for g, (o, _) in zip(grads, diff)])
            torch.autograd.backward([r for _, r in diff], [g.to(r.dtype).to(r.device) for g, (_, r) in zip(grads, diff)])
            gscale = tol_scale if grad_tol_scale is None else grad_tol_scale
            for i, (x, xr) in enumerate(zip(test_in, ref_in)):
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    assert x.grad is not None, f"{msg}: input {i} got no gradient"
                    assert_close(x.grad, xr.grad, **tol(dtype, gscale), msg=f"{msg} grad of input {i}")
    return out, ref


def poison_padding(x: torch.Tensor, lengths: torch.Tensor, dim: int, value: float = float("nan")) -> torch.Tensor:
    """A copy of ``x`` (B, ...) with positions ``>= lengths[b]`` along ``dim`` set to ``value``.

    Use NaN to prove that a backend never reads past a sample's end.
    """
    dim = dim % x.dim()
    pos = torch.arange(x.shape[dim], device=x.device)
    shape = [1] * x.dim()
    shape[0], shape[dim] = x.shape[0], x.shape[dim]
    pad = (pos[None, :] >= lengths.to(x.device)[:, None]).reshape(shape)
    return x.masked_fill(pad, value)


def _outputs_and_grads(fn: Callable, args: Sequence[Any], kwargs: dict, backward: bool) -> list[torch.Tensor]:
    args = _clone_inputs(args, None)
    out = [o for o in _as_tuple(fn(*args, **kwargs)) if isinstance(o, torch.Tensor)]
    result = [o.detach().clone() for o in out]
    if backward:
        diff = [o for o in out if o.requires_grad]
        if diff:
            gen = torch.Generator().manual_seed(1)
            torch.autograd.backward(diff, [torch.randn(o.shape, generator=gen).to(o) for o in diff])
            result += [a.grad.clone() for a in args if isinstance(a, torch.Tensor) and a.grad is not None]
    return result


def assert_deterministic(fn: Callable, *args, runs: int = 2, backward: bool = True, **kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` ``runs`` times; outputs (and input grads) must be bitwise equal."""
    first = _outputs_and_grads(fn, args, kwargs, backward)
    for run in range(1, runs):
        again = _outputs_and_grads(fn, args, kwargs, backward)
        assert len(again) == len(first)
        for i, (a, b) in enumerate(zip(first, again)):
            same = torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.nan_to_num(), b.nan_to_num())
                                         and torch.equal(a.isnan(), b.isnan()))
            assert same, f"run {run} differs from run 0 in result {i} (max diff {(a.double() - b.double()).abs().max().item():.3g})"


def check_custom_op(op, args: tuple, kwargs: dict | None = None, *, compile: bool = True,
                    test_utils: Sequence[str] | None = None, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """``torch.library.opcheck`` on ``op(*args, **kwargs)``, then ``torch.compile(fullgraph=True)``.

    ``op`` is the custom op (``torch.ops.avfast.<name>.default`` or the ``custom_op`` object). The
    compiled call must match the eager one (default tolerance 1e-5; integers exactly).
    """
    kwargs = kwargs or {}
    opcheck_kwargs = {} if test_utils is None else {"test_utils": tuple(test_utils)}
    torch.library.opcheck(op, args, kwargs, **opcheck_kwargs)
    if compile:
        torch._dynamo.reset()
        eager = _as_tuple(op(*args, **kwargs))
        compiled = _as_tuple(torch.compile(lambda *a: op(*a, **kwargs), fullgraph=True, backend="aot_eager")(*args))
        for i, (e, c) in enumerate(zip(eager, compiled)):
            if isinstance(e, torch.Tensor):
                if e.dtype.is_floating_point:
                    assert_close(c, e, atol=atol, rtol=rtol, msg=f"compiled output {i}")
                else:
                    assert torch.equal(c, e), f"compiled output {i} differs"


def check_compiles(fn: Callable, *args, atol: float = 1e-5, rtol: float = 1e-5, backend: str = "aot_eager", **kwargs):
    """``torch.compile(fn, fullgraph=True)`` must run and match eager (a public function, not an op)."""
    torch._dynamo.reset()
    eager = _as_tuple(fn(*args, **kwargs))
    compiled = _as_tuple(torch.compile(fn, fullgraph=True, backend=backend)(*args, **kwargs))
    for i, (e, c) in enumerate(zip(eager, compiled)):
        if isinstance(e, torch.Tensor):
            assert_close(c, e, atol=atol, rtol=rtol, msg=f"compiled output {i}")
    return compiled


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s.getsockname()[1]


def _spawn_entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        queue.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001 - ship the traceback to the parent
        queue.put((rank, "error", traceback.format_exc()))


def spawn(fn: Callable, world_size: int = 2, args: tuple = (), timeout: float = 180.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined by a gloo group.

    ``fn`` must be importable (module level); its picklable return values come back in rank
    order. A rank's exception is re-raised here with its traceback; a hang fails after ``timeout``.
    """
    import queue as queue_mod

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_spawn_entry, args=(r, world_size, port, fn, args, q)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            try:
                rank, status, value = q.get(timeout=timeout)
            except queue_mod.Empty:
                raise AssertionError(f"distributed test timed out after {timeout}s; got ranks {sorted(results)}")
            if status == "error":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]


def backends_for(op: str, device: str = "cpu") -> list[str]:
    """Backends of ``op`` that run on ``device`` here (Triton under the interpreter included)."""
    from avfast import _backend

    names = []
    for b in _backend.backends(op):
        if b.available() is None and device in b.devices + b.explicit_devices():
            names.append(b.name)
    return names


def fused_backends_for(op: str, device: str = "cpu") -> list[str]:
    """``backends_for`` without the ``torch`` reference."""
    return [n for n in backends_for(op, device) if n != "torch"]
