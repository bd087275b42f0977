"""Fingerprints of user code: a cache key must change when the code behind a factory changes.

A factory ``pkg.mod:fn`` is fingerprinted by the source of its module and of every other loaded
module that lives beside it (the user's own files, not installed packages), so editing a helper
the factory imports (relu -> tanh in a block class) re-runs every stage the factory feeds.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

_INSTALLED = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                                     sysconfig.get_paths()["stdlib"]})


def _module_file(name: str) -> Path | None:
    mod = sys.modules.get(name)
    f = getattr(mod, "__file__", None)
    return Path(f).resolve() if f and f.endswith(".py") else None


def user_sources(spec: str) -> list[Path]:
    """The factory's module file and the user modules loaded from its folder tree."""
    module = spec.partition(":")[0]
    own = _module_file(module)
    if own is None:
        return []
    root = own.parent
    found = {own}
    for name in list(sys.modules):
        f = _module_file(name)
        if f is not None and f.is_relative_to(root) and not str(f).startswith(_INSTALLED):
            found.add(f)
    return sorted(found)


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
