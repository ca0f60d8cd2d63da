"""Small helpers shared across avfast's packages."""
from __future__ import annotations

import importlib


def export_public(namespace: dict, package: str, modules: tuple[str, ...]) -> None:
    """Import ``package.<m>`` for each m and copy its ``__all__`` names into ``namespace``.

    A module that does not exist yet is skipped (the op and model issues add them one by one);
    any other import error propagates.
    """
    exported = list(namespace.get("__all__", []))
    for name in modules:
        full = f"{package}.{name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise
            continue
        for public in getattr(module, "__all__", ()):
            namespace[public] = getattr(module, public)
            exported.append(public)
    namespace["__all__"] = exported
