"""Fingerprints of user code: a cache key must change when the code behind a factory changes.

A factory ``pkg.mod:fn`` is fingerprinted by the source of its module and of every user module it
imports, transitively (the user's own files, not installed packages or the standard library), so
editing a helper the factory imports (relu -> tanh in a block class) re-runs every stage it feeds.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any

_INSTALLED = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                                     sysconfig.get_paths()["stdlib"]})


def _module_file(name: str) -> Path | None:
    mod = sys.modules.get(name)
    f = getattr(mod, "__file__", None)
    return Path(f).resolve() if f and f.endswith(".py") else None


def _referenced_modules(module: Any) -> set[str]:
    """Modules a module's namespace points at: imported modules, and the modules of imported names."""
    names = set()
    for value in vars(module).values():
        if isinstance(value, types.ModuleType):
            names.add(value.__name__)
        else:
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str):
                names.add(owner)
    return names


def _is_user_file(f: Path | None) -> bool:
    return f is not None and not str(f).startswith(_INSTALLED)


def user_modules(start: str) -> list[str]:
    """The module ``start`` and the user modules it imports, transitively, in discovery order.

    Only what the factory's module reaches counts, so the fingerprint does not depend on what else
    the process happened to import; installed packages and the standard library are left out.
    """
    if not _is_user_file(_module_file(start)):
        return []
    seen, order = {start}, [start]
    for name in order:  # grows while iterating: a breadth-first walk
        for ref in sorted(_referenced_modules(sys.modules[name])):
            if ref not in seen and ref in sys.modules and _is_user_file(_module_file(ref)):
                seen.add(ref)
                order.append(ref)
    return order


def user_sources(spec: str) -> list[Path]:
    files = {_module_file(m) for m in user_modules(spec.partition(":")[0])}
    return sorted(f for f in files if f is not None)


def code_digest(spec: str | None) -> str | None:
    """sha256 over the sources behind ``spec`` (None when there is no factory)."""
    if not spec:
        return None
    h = hashlib.sha256(spec.encode())
    for f in user_sources(spec):
        h.update(f.name.encode() + b"\0")
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()
