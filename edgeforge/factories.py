"""Import and call user factories named ``package.module:function``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError


def add_search_paths(paths: Iterable[Path]) -> None:
    for p in paths:
        s = str(p)
        if s not in sys.path:
            sys.path.insert(0, s)


_loaded_sources: dict[str, bytes] = {}


def _source(name: str) -> bytes | None:
    f = getattr(sys.modules.get(name), "__file__", None)
    try:
        return Path(f).read_bytes() if f and f.endswith(".py") else None
    except OSError:
        return None


def _import_fresh(module_name: str) -> Any:
    """Import a user module; when it or a user module it imports changed on disk since, re-import
    them (the imported ones first), so a long-lived process that builds twice never runs
    yesterday's code under today's cache key."""
    from .fingerprint import user_modules

    module = importlib.import_module(module_name)
    closure = user_modules(module_name)
    changed = [m for m in closure if m in _loaded_sources and _loaded_sources[m] != _source(m)]
    if changed:
        for name in reversed(closure):
            importlib.reload(sys.modules[name])
        module = sys.modules[module_name]
    for name in user_modules(module_name):
        src = _source(name)
        if src is not None:
            _loaded_sources[name] = src
    return module


def load_callable(spec: str, key: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = _import_fresh(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module '{module_name}' ({exc}); check the name and that it is on PYTHONPATH") from None
    except Exception as exc:
        raise ConfigError(f"{key}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{key}: '{module_name}' has no callable '{attr}'")
    return fn


def call_factory(spec: str, key: str, *args: Any, **kwargs: Any) -> Any:
    fn = load_callable(spec, key)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise ConfigError(f"{key}: {spec}() failed: {type(exc).__name__}: {exc}") from None
