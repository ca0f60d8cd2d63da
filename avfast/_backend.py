"""Backend registry and dispatch for avfast's ops.

Each op has several implementations ("backends": ``torch``, ``cpp``, ``triton``, ``cuda``, ...).
A backend declares what it supports (devices, dtypes, autograd, determinism, availability on this
machine, shape limits) and, for an input it refuses, returns the reasons. ``select`` picks:

- ``backend="auto"``: the highest-priority backend with no reasons to refuse the call; skipped
  backends are logged once at debug level.
- an explicit name: that backend, or ``BackendError`` listing why it cannot serve.
- env ``AVFAST_BACKEND`` overrides ``auto``: ``"cpp"`` (every op that has a ``cpp`` backend uses it;
  ops without one stay on auto) or per op, ``"mel_spectrogram=cpp,affinity_topk=torch"``.

Op files register their backends with the ``register_backend`` decorator, so adding a backend adds
code in one place only::

    @register_backend("affinity_topk", "cpp", priority=20, devices=("cpu",),
                      dtypes=(torch.float32,), autograd=False, available=cpp_op("affinity_topk"))
    def _affinity_cpp(x, y, k, ...): ...

    impl = select("affinity_topk", x, y, backend=backend, k=k)   # -> Backend
    impl.fn(x, y, k, ...)
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable, Iterable, Sequence

import torch

log = logging.getLogger("avfast.dispatch")

ENV_VAR = "AVFAST_BACKEND"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# op name -> backend name -> Backend
_REGISTRY: dict[str, dict[str, "Backend"]] = {}
_LOGGED: set = set()
_AVAILABILITY: dict[tuple[str, str], str | None] = {}


class BackendError(RuntimeError):
    """An explicitly requested backend cannot serve the call, or no backend can."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of one op and what it supports.

    ``available()`` returns None or why the backend cannot run on this machine at all (not built,
    no triton, no CUDA). ``check(*tensors, **info)`` returns the reasons it refuses one call (shape
    limits, unsupported options). ``priority`` is an int or ``priority(*tensors, **info) -> int``
    for shape-aware ordering; higher wins. ``explicit_devices()`` lists devices served only on
    explicit request (Triton on CPU under ``TRITON_INTERPRET=1``: correct, far too slow for auto).
    """

    op: str
    name: str
    fn: Callable
    priority: int | Callable[..., int] = 0
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    autograd: bool = False
    deterministic: bool = True
    available: Callable[[], str | None] = lambda: None
    check: Callable[..., Iterable[str]] | None = None
    explicit_devices: Callable[[], tuple[str, ...]] = lambda: ()
    description: str = ""

    def rank(self, tensors: Sequence[torch.Tensor], info: dict) -> int:
        return self.priority(*tensors, **info) if callable(self.priority) else self.priority

    def not_supported_reasons(self, tensors: Sequence[torch.Tensor | None], *, explicit: bool = False,
                              **info) -> list[str]:
        """Why this backend refuses a call on ``tensors`` (empty list: it accepts).

        The first tensor is the primary one: its device and dtype are checked against the
        declaration. ``info`` carries op-specific values (``k=5``, ``needs_grad=True``, ...) that
        the backend's ``check`` reads.
        """
        unavailable = _availability(self.op, self.name)
        if unavailable:
            return [unavailable]
        present = [t for t in tensors if t is not None]
        reasons = []
        if present:
            primary = present[0]
            device = primary.device.type
            allowed = self.devices + (self.explicit_devices() if explicit else ())
            if device not in allowed:
                extra = self.explicit_devices()
                hint = f" ({device} only when requested explicitly)" if device in extra else ""
                reasons.append(f"device {device} not supported (supports {', '.join(self.devices)}){hint}")
            if primary.dtype not in self.dtypes:
                names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
                reasons.append(f"dtype {str(primary.dtype).replace('torch.', '')} not supported (supports {names})")
        needs_grad = info.get("needs_grad")
        if needs_grad is None:
            needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in present)
        if needs_grad and not self.autograd:
            reasons.append("no backward: an input requires grad")
        if not self.deterministic and torch.are_deterministic_algorithms_enabled():
            reasons.append("not deterministic and torch.use_deterministic_algorithms(True) is set")
        if self.check is not None and not reasons:
            reasons.extend(self.check(*tensors, **info))
        return reasons


@torch._dynamo.assume_constant_result
def _availability(op: str, name: str) -> str | None:
    """``available()`` of a backend, evaluated once per process (also at torch.compile trace time)."""
    key = (op, name)
    if key not in _AVAILABILITY:
        _AVAILABILITY[key] = _REGISTRY[op][name].available()
    return _AVAILABILITY[key]


def register_backend(op: str, name: str, **declaration) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as backend ``name`` of ``op``; see ``Backend`` for the fields."""

    def deco(fn: Callable) -> Callable:
        ops = _REGISTRY.setdefault(op, {})
        if name in ops and ops[name].fn is not fn:
            raise ValueError(f"backend {name!r} of op {op!r} is registered twice")
        ops[name] = Backend(op=op, name=name, fn=fn, **declaration)
        return fn

    return deco


def _load_ops() -> None:
    import avfast.ops  # noqa: F401  (registers every op's backends)


def ops() -> list[str]:
    """Names of every registered op."""
    _load_ops()
    return sorted(_REGISTRY)


def backends(op: str) -> list[Backend]:
    """All backends registered for ``op``, highest static priority first."""
    _load_ops()
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_REGISTRY)) or 'none'}")
    static = lambda b: b.priority if isinstance(b.priority, int) else 0
    return sorted(_REGISTRY[op].values(), key=static, reverse=True)


def get_backend(op: str, name: str) -> Backend:
    """The backend ``name`` of ``op`` (BackendError listing the known names)."""
    table = {b.name: b for b in backends(op)}
    if name not in table:
        raise BackendError(f"{op} has no backend {name!r}; its backends: {', '.join(table)}")
    return table[name]


def available_backends(op: str) -> list[str]:
    """Backends of ``op`` that can run on this machine (built, dependencies importable)."""
    return [b.name for b in backends(op) if _availability(op, b.name) is None]


@torch._dynamo.assume_constant_result
def _env_choice(op: str, names: tuple[str, ...]) -> str | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value or value == "auto":
        return None
    if "=" not in value:
        return value if value in names else None
    for item in value.split(","):
        key, _, choice = item.partition("=")
        if key.strip() == op:
            return choice.strip() or None
    return None


def _describe(tensors: Sequence[torch.Tensor | None], info: dict) -> str:
    present = [t for t in tensors if t is not None]
    parts = []
    if present:
        t = present[0]
        parts.append(f"device={t.device.type}, dtype={str(t.dtype).replace('torch.', '')}, shape={tuple(t.shape)}")
    parts += [f"{k}={v}" for k, v in info.items()]
    return ", ".join(parts)


def select(op: str, *tensors: torch.Tensor | None, backend: str = "auto", **info) -> Backend:
    """Pick the backend of ``op`` that runs this call.

    Args:
        tensors: the call's tensors, the primary one (whose device/dtype decide) first; None allowed.
        backend: ``"auto"`` or a backend name.
        info: op-specific facts for the backends' ``check`` (``k=5``, ``needs_grad=True``).
    Raises:
        BackendError: an explicit backend refuses (with its reasons), or no backend accepts.
        ValueError: tensors on different devices.
    """
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) > 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    candidates = backends(op)
    names = tuple(b.name for b in candidates)
    if backend == "auto":
        backend = _env_choice(op, names) or "auto"
    if backend != "auto":
        chosen = get_backend(op, backend)
        reasons = chosen.not_supported_reasons(tensors, explicit=True, **info)
        if reasons:
            raise BackendError(
                f"{op}: backend {backend!r} cannot run this call ({_describe(tensors, info)}):\n"
                + "\n".join(f"  - {r}" for r in reasons)
                + f"\nBackends that can: {', '.join(_accepting(candidates, tensors, info)) or 'none'}"
            )
        return chosen
    ranked = sorted(candidates, key=lambda b: b.rank(tensors, info), reverse=True)
    refused = []
    for b in ranked:
        reasons = b.not_supported_reasons(tensors, **info)
        if not reasons:
            if refused and not torch.compiler.is_compiling():
                _log_once(op, b.name, refused)
            return b
        refused.append((b.name, reasons))
    raise BackendError(
        f"{op}: no backend can run this call ({_describe(tensors, info)}):\n"
        + "\n".join(f"  - {name}: {'; '.join(r)}" for name, r in refused)
    )


def _accepting(candidates: Sequence[Backend], tensors, info) -> list[str]:
    return [b.name for b in candidates if not b.not_supported_reasons(tensors, **info)]


def _log_once(op: str, chosen: str, refused: list) -> None:
    key = (op, chosen, tuple((n, tuple(r)) for n, r in refused))
    if key not in _LOGGED:
        _LOGGED.add(key)
        skipped = "; ".join(f"{n} ({', '.join(r)})" for n, r in refused)
        log.debug("%s: using %s; skipped %s", op, chosen, skipped)


# Availability predicates shared by the ops' declarations -------------------------------------


def cpp_op(name: str) -> Callable[[], str | None]:
    """``available`` for a backend that needs the private C++ op ``avfast_C::<name>``."""
    from avfast import _ext

    return functools.partial(_ext.op_missing_reason, name)


def cuda_op(name: str) -> Callable[[], str | None]:
    """``available`` for a backend that needs CUDA and the CUDA op ``avfast_C::<name>``."""
    from avfast import _ext

    def available():
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        if not _ext.cuda_built():
            return "avfast._C was built without CUDA kernels (torch without CUDA or no nvcc at build time)"
        return _ext.op_missing_reason(name)

    return available


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


def triton_available() -> str | None:
    """``available`` for Triton backends: triton importable and a GPU or the interpreter."""
    err = _triton_import_error()
    if err:
        return err
    if not torch.cuda.is_available() and not triton_interpreting():
        return "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on CPU, slowly)"
    return None


def triton_explicit_devices() -> tuple[str, ...]:
    """``explicit_devices`` for Triton backends: CPU tensors under the interpreter."""
    return ("cpu",) if triton_interpreting() else ()


def triton_backend(op: str, **declaration) -> Callable[[Callable], Callable]:
    """``register_backend(op, "triton", ...)`` with Triton's devices and availability filled in."""
    declaration.setdefault("devices", ("cuda",))
    declaration.setdefault("available", triton_available)
    declaration.setdefault("explicit_devices", triton_explicit_devices)
    return register_backend(op, "triton", **declaration)


def backend_table() -> list[tuple[str, str, str]]:
    """(op, backend, "available" or the reason it is not) for every registered backend."""
    rows = []
    for op in ops():
        for b in backends(op):
            reason = _availability(op, b.name)
            rows.append((op, b.name, "available" if reason is None else reason))
    return rows
