"""Which folders edgeforge may write into, and cleaning what killed builds left there.

edgeforge replaces files in its output folder, so it only writes into a folder it created or one
that carries its marker; an existing folder of the user's is refused, never overwritten.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import EdgeforgeError

MARKER = ".edgeforge-output"
LOCK_NAME = ".edgeforge.lock"
_MARKER_TEXT = "This folder is written by edgeforge builds; files in it may be replaced or removed.\n"
# Written next to every artifact by the atomic writers: ".<name>.tmp-<pid>".
_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")


def _refuse_special(folder: Path, config_dir: Path | None) -> None:
    home = Path.home().resolve()
    protected = {Path("/"): "the root folder", home: "your home folder"}
    if config_dir is not None:
        protected[config_dir.resolve()] = "the config's own folder"
    for place, what in protected.items():
        if folder == place or folder in place.parents:
            shown = what if folder == place else f"a folder above {what}"
            raise EdgeforgeError(f"output: {folder} is {shown}; set 'output' to a folder of its own, e.g. build/<name>")


def _write_marker(folder: Path) -> None:
    fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, _MARKER_TEXT.encode())
    finally:
        os.close(fd)


def claim_output(out_dir: Path, *, config_dir: Path | None = None) -> None:
    """Make ``out_dir`` edgeforge's (create it and mark it), or raise if it belongs to someone else."""
    folder = out_dir.resolve()
    _refuse_special(folder, config_dir)
    try:
        if not folder.exists():
            folder.mkdir(parents=True)
            _write_marker(folder)
            return
        if not folder.is_dir():
            raise EdgeforgeError(f"output: {folder} is a file, not a folder; set 'output' to a folder")
        marker = folder / MARKER
        if marker.is_symlink() or (marker.exists() and not marker.is_file()):
            raise EdgeforgeError(f"output: {marker} is not edgeforge's marker file; remove it or choose another folder")
        if marker.is_file():
            return
        entries = sorted(p.name for p in folder.iterdir())
        # A lock file alone is what a build of an edgeforge without markers leaves behind.
        if set(entries) - {LOCK_NAME}:
            shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
            raise EdgeforgeError(
                f"output: {folder} already holds files edgeforge did not write ({shown}); choose a new or empty "
                f"folder for 'output', or create {MARKER} in it to let edgeforge replace its contents"
            )
        _write_marker(folder)
    except OSError as exc:
        raise EdgeforgeError(f"output: cannot write to {folder} ({exc.strerror or exc})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(out_dir: Path, log: Callable[[str], None]) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files and folders whose process is gone; returns what was removed."""
    removed: list[Path] = []
    if not out_dir.is_dir() or out_dir.is_symlink():
        return removed
    for root, dirs, files in os.walk(out_dir, followlinks=False):
        for name in [*dirs, *files]:
            m = _TEMP.match(name)
            if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
                continue
            path = Path(root) / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log(f"could not remove the stale temp {path} ({exc.strerror or exc})")
                continue
            removed.append(path)
            log(f"removed {path}, left by an interrupted build (process {m.group(1)})")
        dirs[:] = [d for d in dirs if not _TEMP.match(d)]
    return removed
