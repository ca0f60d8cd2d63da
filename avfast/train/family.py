"""Model families: what one trainer needs to train any of the seed papers' systems.

A family declares its config sections (dataclasses whose defaults are its paper's settings), how
to build its model, objective, data and evaluation, and optionally trainer hooks (e.g. OGM-GE).
Each family lives in ``avfast/train/families/<name>.py`` as ``FAMILY = Family(...)`` (and may
define ``add_parser(sub)`` for its ``avfast <command>``); the package is scanned, so adding a family
adds a file and edits no list; ``register_family`` adds one defined elsewhere (a plug-in).

>>> from avfast.train.family import get_family, family_names
>>> get_family("dub").model.__name__
'ModelConfig'
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

__all__ = ["Family", "get_family", "family_names", "family_modules", "register_family"]

_REGISTERED: dict[str, "Family"] = {}  # families registered from code (plug-ins, tests)


@dataclass(frozen=True)
class Family:
    """A model family.

    Attributes:
        name: the config's ``family:`` value.
        model, data, loss, eval: dataclasses of those config sections (defaults = the paper's).
        build_model: ``cfg -> nn.Module`` (initialised from ``cfg.train.seed``).
        build_objective: ``(cfg, model) -> objective``; ``objective(model, batch)`` returns
            ``(loss, logs)`` or ``(loss, logs, aux)`` (``aux``: a dict handed to the hooks).
        build_data: ``(cfg, split, dist_info) -> DataSource`` (``split``: train | val | test).
        validate: ``cfg -> None``, cross-key rules raising ``ConfigError`` that names the key.
        build_hooks: ``cfg -> list`` of trainer hooks (``after_backward`` / ``on_epoch_end``).
        evaluate: ``(cfg, model, split, dist_info) -> dict`` of metrics (floats at the top level
            are logged and usable as ``train.early_stopping_metric``).
        defaults: nested dict merged under a config file, for the shared ``optim`` / ``train``
            sections (e.g. the paper's SGD and step schedule).
    """

    name: str
    model: type
    data: type
    loss: type
    eval: type
    build_model: Callable[[Any], Any]
    build_objective: Callable[[Any, Any], Callable]
    build_data: Callable[[Any, str, Any], Any]
    validate: Callable[[Any], None] | None = None
    build_hooks: Callable[[Any], list] | None = None
    evaluate: Callable[[Any, Any, str, Any], dict] | None = None
    defaults: dict | None = None


@lru_cache(maxsize=None)
def family_modules() -> dict[str, Any]:
    """``{module name: module}`` of ``avfast.train.families`` (imported once)."""
    import avfast.train.families as package

    return {info.name: importlib.import_module(f"{package.__name__}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")}


@lru_cache(maxsize=None)
def _families() -> dict[str, Family]:
    out = {}
    for module in family_modules().values():
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            if family.name in out:
                raise RuntimeError(f"family {family.name!r} is declared twice ({module.__name__})")
            out[family.name] = family
    return out


def register_family(family: Family) -> Family:
    """Add a family defined outside ``avfast.train.families`` (a plug-in); its name must be new."""
    if family.name in _families() or _REGISTERED.get(family.name, family) is not family:
        raise ValueError(f"a family called {family.name!r} exists already")
    _REGISTERED[family.name] = family
    return family


def family_names() -> list[str]:
    """The known family names, sorted."""
    return sorted({**_families(), **_REGISTERED})


def get_family(name: str) -> Family:
    """The family called ``name``; ``ConfigError`` listing the known ones otherwise."""
    from avfast.train.config import ConfigError

    families = {**_families(), **_REGISTERED}
    if name not in families:
        raise ConfigError(f"unknown family {name!r}; known families: {sorted(families)}")
    return families[name]
