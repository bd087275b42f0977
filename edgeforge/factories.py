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


def _import_fresh(module_name: str) -> Any:
    """Import a user module, re-importing it when its file changed since (a long-lived process that
    builds twice must not run yesterday's code under today's cache key)."""
    module = importlib.import_module(module_name)
    f = getattr(module, "__file__", None)
    if f and f.endswith(".py"):
        try:
            src = Path(f).read_bytes()
        except OSError:
            return module
        if module_name in _loaded_sources and _loaded_sources[module_name] != src:
            module = importlib.reload(module)
        _loaded_sources[module_name] = src
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
