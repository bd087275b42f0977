"""User-code fingerprints: what the factory's module reaches counts, nothing else the process loaded."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from edgeforge.factories import load_callable
from edgeforge.fingerprint import code_digest


def test_helper_edits_change_the_digest_unrelated_imports_do_not(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fp_blocks.py").write_text("ACT = 'relu'\n")
    (tmp_path / "fp_factory.py").write_text("import fp_blocks\n\ndef build():\n    return fp_blocks.ACT\n")
    (tmp_path / "fp_unrelated.py").write_text("X = 1\n")
    load_callable("fp_factory:build", "student.factory")
    first = code_digest("fp_factory:build")
    importlib.import_module("fp_unrelated")
    assert code_digest("fp_factory:build") == first, "another module loaded beside it changes nothing"
    (tmp_path / "fp_blocks.py").write_text("ACT = 'tanh'\n")
    assert code_digest("fp_factory:build") != first, "an edit to a module the factory imports counts"
    (tmp_path / "fp_factory.py").write_text("import fp_blocks\n\ndef build():\n    return fp_blocks.ACT + '!'\n")
    fn = load_callable("fp_factory:build", "student.factory")
    assert fn() == "tanh!", "a changed factory module is re-imported, never run stale"
    for name in ("fp_blocks", "fp_factory", "fp_unrelated"):
        sys.modules.pop(name, None)


def test_installed_packages_are_not_user_code() -> None:
    assert code_digest(None) is None
    assert code_digest("json:dumps") == code_digest("json:dumps")
