"""Stage cache and atomic writes: a stage's outputs live in a folder named by the hash of its inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of edgeforge's own source: a checkout changed without a version bump misses the cache."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def stage_key(stage: str, **inputs: Any) -> str:
    blob = json.dumps({"stage": stage, "edgeforge": __version__, "code": code_digest(), **inputs},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through memory: torch's own zip writer aborts the process on a full disk."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def _folder_digests(folder: Path) -> dict[str, str]:
    from .validate import sha256_file

    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != DONE}


DONE = "done.json"


class StageCache:
    """Stage outputs in folders named ``<kind>-<key>``, each with a ``done.json``: the stage's record
    and the sha256 of every file the stage wrote. An entry whose files do not match (tampered,
    truncated, swapped in by someone else) is a miss: it is removed and rebuilt, never trusted."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def partial(self, stage: str, key: str) -> Path:
        """Where an unfinished run of the stage keeps what lets a rerun resume (epoch checkpoints).
        Keyed like the entry itself; removed when the entry is complete."""
        return self.root / "partial" / f"{stage}-{key}"

    def verify(self, folder: Path) -> tuple[dict[str, Any] | None, str]:
        """(record, '') for an intact entry, else (None, why not)."""
        try:
            done = json.loads((folder / DONE).read_text())
            files, record = done["files"], done["record"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, "its done.json is missing or unreadable"
        if not isinstance(files, dict) or not isinstance(record, dict):
            return None, "its done.json is malformed"
        actual = _folder_digests(folder)
        if actual != files:
            changed = sorted(set(actual) ^ set(files) | {k for k in files if actual.get(k) != files[k]})
            return None, f"{', '.join(changed[:3])} differ from what this stage wrote"
        return record, ""

    def lookup(self, stage: str, key: str, on_invalid: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        d = self.folder(stage, key)
        if not d.exists():
            return None
        record, why = self.verify(d)
        if record is None:
            if on_invalid:
                on_invalid(f"cache entry {d.name} is not the one edgeforge wrote ({why}): rebuilding it")
            shutil.rmtree(d, ignore_errors=True)
        return record

    def run(self, stage: str, key: str, produce: Callable[[Path], dict[str, Any]],
            on_invalid: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any], bool]:
        """Return (folder, record, cached). ``produce`` writes into a temp folder, renamed when done."""
        record = self.lookup(stage, key, on_invalid)
        final = self.folder(stage, key)
        if record is not None:
            return final, record, True
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            record = produce(tmp)
            done = {"record": record, "files": _folder_digests(tmp)}
            atomic_write_text(tmp / DONE, json.dumps(done, indent=2, default=float))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            shutil.rmtree(self.partial(stage, key), ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, record, False
