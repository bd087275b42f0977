"""One exception root. Every user-facing failure is an EdgeforgeError rendered as one line.

Errors carry what they are about as fields (target, op, file, key, fix), so callers decide from
the fields, never by parsing a message back, and one formatter (``format_error``) renders them.
"""

from __future__ import annotations

from typing import Any


class EdgeforgeError(Exception):
    """Base of every error edgeforge raises on purpose; the CLI prints it as one line, exit 1.

    ``message`` says what went wrong; the optional fields say where (file, key, target, op) and
    how to fix it. ``str(exc)`` is the rendered one-liner, so older call sites that pass a whole
    sentence keep working.
    """

    def __init__(self, message: str = "", *, target: str | None = None, op: str | None = None,
                 file: str | None = None, key: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.target = target
        self.op = op
        self.file = str(file) if file is not None else None
        self.key = key
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = [p for p in (self.file, self.key) if p and not self.message.startswith(p)]
        text = self.message
        if self.target and f"target {self.target}" not in text:
            text = f"target {self.target}: {text}"
        if where:
            text = f"{': '.join(where)}: {text}"
        if self.op and self.op not in text:
            text = f"{text} (op {self.op})"
        if self.fix:
            text = f"{text}; {self.fix}"
        return text

    def __str__(self) -> str:
        return self.render()

    def fields(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "message": self.message, "target": self.target, "op": self.op,
                "file": self.file, "key": self.key, "fix": self.fix}


class ConfigError(EdgeforgeError):
    """A config or target profile is malformed: names the file, the key path and the fix."""


class DataError(EdgeforgeError):
    """A data split or calibration set is missing, empty or inconsistent."""


class ModelError(EdgeforgeError):
    """A teacher or student cannot be built or loaded, or their shapes disagree."""


class ExportError(EdgeforgeError):
    """An exporter could not produce an artifact for a target."""


class ArtifactCheckFailed(EdgeforgeError):
    """An artifact was written but breaks a rule of its format (e.g. float ops in a full-int8 file)."""


class RuntimeUnavailable(EdgeforgeError):
    """A runtime is not installed or cannot run on this host; the message says why."""


class MissingExtra(EdgeforgeError):
    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"the Python package '{module}' is not installed",
                         fix=f"install it with: pip install 'edgeforge[{extra}]'")
        self.module = module
        self.extra = extra


def unexpected(exc: BaseException, limit: int = 200) -> str:
    """One line for an exception edgeforge did not raise on purpose (a converter's, a runtime's)."""
    if isinstance(exc, EdgeforgeError):
        return str(exc)
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:limit]}".rstrip(": ")


def format_error(exc: BaseException) -> str:
    """The single line the CLI prints for any error."""
    return f"edgeforge: error: {unexpected(exc, 400)}"


def require(module: str, extra: str) -> Any:
    """Import a heavy optional dependency, naming the pip extra when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, extra) from exc
