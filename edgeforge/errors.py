"""One exception root. Every user-facing failure is an EdgeforgeError with a one-line message."""

from __future__ import annotations

from typing import Any


class EdgeforgeError(Exception):
    """Base of every error edgeforge raises on purpose; the CLI prints it as one line, exit 1."""


class ConfigError(EdgeforgeError):
    """A config or target profile is malformed: names the file, the key path and the fix."""


class DataError(EdgeforgeError):
    """A data split or calibration set is missing, empty or inconsistent."""


class ModelError(EdgeforgeError):
    """A teacher or student cannot be built or loaded, or their shapes disagree."""


class ExportError(EdgeforgeError):
    """An exporter could not produce an artifact for a target."""


class RuntimeUnavailable(EdgeforgeError):
    """A runtime is not installed or cannot run on this host; the message says why."""


class MissingExtra(EdgeforgeError):
    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"the Python package '{module}' is not installed; install it with: pip install 'edgeforge[{extra}]'"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str) -> Any:
    """Import a heavy optional dependency, naming the pip extra when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, extra) from exc
