"""Runtime adapters, registered by (format, runtime name) and imported only when asked for.

One format can have several runtimes (Core ML: Core ML itself on macOS and the reference
interpreter elsewhere). A profile may name one (``runtime.engine``); otherwise the first one this
host can run, in each runtime's ``priority`` order, is used.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError
from .base import RUNTIMES, Runtime, Session

_NOT_RUNTIMES = {"base", "torch_ref"}  # torch_ref runs the reference models, not artifacts


def _import_all() -> None:
    for m in pkgutil.iter_modules(__path__):
        if m.name not in _NOT_RUNTIMES:
            importlib.import_module(f".{m.name}", __name__)


def runtimes_for(fmt: str) -> list[type[Runtime]]:
    _import_all()
    found = [RUNTIMES.get(key) for key in RUNTIMES if key.split(":", 1)[0] == fmt]
    return sorted(found, key=lambda r: r.priority)


def get_runtime(fmt: str, name: str | None = None) -> Runtime:
    """The runtime for a format: the one named, else the first this host can run, else the first."""
    candidates = runtimes_for(fmt)
    if not candidates:
        raise ConfigError(f"no runtime is registered for format '{fmt}'")
    if name is not None:
        for cls in candidates:
            if cls.name == name:
                return cls()
        raise ConfigError(f"format {fmt} has no runtime '{name}'; available: "
                          f"{', '.join(c.name for c in candidates)}")
    runtimes = [cls() for cls in candidates]
    return next((r for r in runtimes if r.unavailable_reason() is None), runtimes[0])


__all__ = ["RUNTIMES", "Runtime", "Session", "get_runtime", "runtimes_for"]
