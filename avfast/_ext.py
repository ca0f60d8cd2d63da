"""Loads the compiled extension ``avfast._C`` once and answers what it contains."""
from __future__ import annotations

import functools
import importlib
import warnings

import torch

_HINT = "build it with `pip install --no-build-isolation -e .` (needs a C++ compiler and ninja)"


@functools.lru_cache(maxsize=None)
def load_error() -> str | None:
    """None when ``avfast._C`` is loaded, else why not (warned once, the first time)."""
    try:
        importlib.import_module("avfast._C")
    except ImportError as exc:  # missing .so, or built against another torch
        reason = f"avfast._C is not available ({exc}); {_HINT}"
        warnings.warn(f"{reason}. Falling back to the pure-torch backends.", RuntimeWarning, stacklevel=3)
        return reason
    return None


def has_op(name: str) -> bool:
    """True when the private C++ op ``torch.ops.avfast_C.<name>`` was compiled in."""
    return load_error() is None and hasattr(torch.ops.avfast_C, name)


def op_missing_reason(name: str) -> str | None:
    """None when ``avfast_C::<name>`` exists, else the reason a backend that needs it refuses."""
    err = load_error()
    if err is not None:
        return err
    if not hasattr(torch.ops.avfast_C, name):
        return f"C++ op avfast_C::{name} is not in this build of avfast._C; rebuild ({_HINT})"
    return None


@functools.lru_cache(maxsize=None)
def build_info() -> dict[str, str]:
    """Build flags of ``avfast._C``, e.g. ``{"cpp": "1", "cuda": "0", "openmp": "1", "avx512": "1"}``
    (``avx512``: this CPU runs the C++ kernels' AVX-512 paths, off with ``AVFAST_NO_AVX512``); {} if absent."""
    if load_error() is not None:
        return {}
    return dict(item.split("=", 1) for item in torch.ops.avfast_C.build_info().split(";"))


def cpu_avx512() -> bool:
    """True when the C++ CPU kernels run their AVX-512 paths on this machine."""
    return build_info().get("avx512", "0") == "1"


def cuda_built() -> bool:
    """True when ``avfast._C`` was compiled with its CUDA kernels."""
    return build_info().get("cuda", "0") not in ("", "0")
