"""Dispatch rules of avfast._backend, on a toy op registered for the test."""
import logging

import pytest
import torch

from avfast import _backend
from avfast._backend import BackendError, register_backend, select

OP = "_toy_op"


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(_backend._REGISTRY, OP, {})
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    monkeypatch.setattr(_backend, "_AVAILABILITY", {})
    register_backend(OP, "torch", priority=0, autograd=True)(lambda x: ("torch", x))
    register_backend(OP, "fast", priority=20, devices=("cpu",), dtypes=(torch.float32,),
                     check=lambda x, k=1: [f"k={k} > 8"] if k > 8 else [])(lambda x: ("fast", x))
    register_backend(OP, "gpu", priority=30, devices=("cuda",), autograd=True,
                     explicit_devices=lambda: ("cpu",))(lambda x: ("gpu", x))
    register_backend(OP, "missing", priority=50, available=lambda: "not built: avfast._C lacks it")(lambda x: x)
    register_backend(OP, "flaky", priority=40, deterministic=False, devices=("cpu",))(lambda x: ("flaky", x))
    return OP


def test_auto_picks_highest_priority_that_accepts(toy):
    assert select(toy, torch.ones(2)).name == "flaky"


def test_auto_skips_non_deterministic_in_deterministic_mode(toy):
    torch.use_deterministic_algorithms(True)
    try:
        assert select(toy, torch.ones(2)).name == "fast"
    finally:
        torch.use_deterministic_algorithms(False)


def test_auto_skips_by_dtype_shape_and_autograd(toy, monkeypatch):
    monkeypatch.delitem(_backend._REGISTRY[toy], "flaky")
    assert select(toy, torch.ones(2, dtype=torch.float64)).name == "torch"
    assert select(toy, torch.ones(2), k=9).name == "torch"
    assert select(toy, torch.ones(2, requires_grad=True)).name == "torch"
    with torch.no_grad():
        assert select(toy, torch.ones(2, requires_grad=True)).name == "fast"
    assert select(toy, torch.ones(2), needs_grad=True).name == "torch"


def test_explicit_only_devices(toy):
    # "gpu" serves CPU tensors only when asked for by name (like Triton under the interpreter)
    assert select(toy, torch.ones(2)).name != "gpu"
    assert select(toy, torch.ones(2), backend="gpu").name == "gpu"


def test_explicit_backend_that_cannot_serve_lists_reasons(toy):
    with pytest.raises(BackendError) as err:
        select(toy, torch.ones(2, dtype=torch.float16, requires_grad=True), backend="fast")
    text = str(err.value)
    assert "dtype float16 not supported" in text and "no backward" in text and "Backends that can: " in text
    with pytest.raises(BackendError, match="not built"):
        select(toy, torch.ones(2), backend="missing")
    with pytest.raises(BackendError, match="has no backend 'nope'"):
        select(toy, torch.ones(2), backend="nope")


def test_no_backend_accepts(monkeypatch):
    monkeypatch.setitem(_backend._REGISTRY, OP, {})
    register_backend(OP, "only", devices=("cuda",))(lambda x: x)
    with pytest.raises(BackendError, match="(?s)no backend can run this call.*device cpu not supported"):
        select(OP, torch.ones(1))


def test_mixed_devices_rejected(toy):
    with pytest.raises(ValueError, match="one device"):
        select(toy, torch.ones(1), torch.ones(1, device="meta"))


def test_env_var_global_and_per_op(toy, monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert select(toy, torch.ones(2)).name == "torch"
    monkeypatch.setenv(_backend.ENV_VAR, "cpp")  # toy op has no cpp: stays on auto
    assert select(toy, torch.ones(2)).name == "flaky"
    monkeypatch.setenv(_backend.ENV_VAR, f"other_op=torch,{toy}=fast")
    assert select(toy, torch.ones(2)).name == "fast"
    monkeypatch.setenv(_backend.ENV_VAR, f"{toy}=missing")
    with pytest.raises(BackendError, match="not built"):
        select(toy, torch.ones(2))
    # an explicit argument wins over the environment
    assert select(toy, torch.ones(2), backend="torch").name == "torch"


def test_shape_aware_priority(monkeypatch):
    monkeypatch.setitem(_backend._REGISTRY, OP, {})
    register_backend(OP, "short", priority=lambda x: 10 if x.shape[0] < 4 else 0)(lambda x: x)
    register_backend(OP, "long", priority=5)(lambda x: x)
    assert select(OP, torch.ones(2)).name == "short"
    assert select(OP, torch.ones(8)).name == "long"


def test_fallback_logged_once(toy, caplog, monkeypatch):
    monkeypatch.setattr(_backend, "_LOGGED", set())
    with caplog.at_level(logging.DEBUG, logger="avfast.dispatch"):
        for _ in range(3):
            select(toy, torch.ones(2, dtype=torch.float64))
    lines = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(lines) == 1 and "missing (not built" in lines[0]


def test_duplicate_registration_rejected(toy):
    with pytest.raises(ValueError, match="registered twice"):
        register_backend(toy, "torch")(lambda x: x)


def test_available_backends_and_table(toy):
    assert _backend.available_backends(toy) == ["flaky", "gpu", "fast", "torch"]
    rows = [r for r in _backend.backend_table() if r[0] == toy]
    assert ("_toy_op", "missing", "not built: avfast._C lacks it") in rows


def test_unknown_op():
    with pytest.raises(KeyError, match="unknown op"):
        _backend.backends("no_such_op")


def test_triton_declaration_follows_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.triton_explicit_devices() == ("cpu",)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _backend.triton_explicit_devices() == ()
    if not torch.cuda.is_available():
        assert "no CUDA device" in (_backend.triton_available() or "")


def test_select_traces_under_torch_compile_fullgraph(toy, monkeypatch):
    monkeypatch.delitem(_backend._REGISTRY[toy], "flaky")

    def public(x):
        impl = select(toy, x)
        return impl.fn(x)[1] * 2

    x = torch.randn(3)
    torch._dynamo.reset()
    out = torch.compile(public, fullgraph=True, backend="eager")(x)
    assert torch.equal(out, x * 2)
