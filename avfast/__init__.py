"""avfast: fused ops, data pipeline, models and trainer for audio-visual representation learning.

Submodules: ``avfast.ops`` (fused ops), ``avfast.nn`` (modules), ``avfast.data``, ``avfast.models``,
``avfast.train``, ``avfast.metrics``; they load on first use.
"""
from __future__ import annotations

import importlib

from avfast._backend import BackendError, available_backends, backend_table
from avfast._version import __version__

_SUBMODULES = ("ops", "nn", "data", "models", "train", "metrics", "cli")

__all__ = ["BackendError", "available_backends", "backend_table", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"avfast.{name}")
    raise AttributeError(f"module 'avfast' has no attribute {name!r}")
