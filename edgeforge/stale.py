"""Remove ``targets/<name>/`` folders an earlier build left and this build's manifest does not list.

Only folders that hold nothing but what edgeforge writes there (``model.*`` artifacts and their
``.model.*.tmp-PID`` staging copies) are removed; a folder with any other entry, a symlink, or a
symlinked folder is kept and reported, so a user's own files are never deleted.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

OURS = re.compile(r"(model\.[A-Za-z0-9._-]+|\.model\.[A-Za-z0-9._-]+\.tmp-\d+)")


def _foreign_entries(folder: Path) -> list[str]:
    return sorted(e.name for e in folder.iterdir() if e.is_symlink() or not OURS.fullmatch(e.name))


def prune_stale_targets(out_dir: Path, keep: set[str], log: Callable[[str], None]) -> list[str]:
    """Delete stale target folders under ``out_dir/targets`` not in ``keep``; return the names removed."""
    root = out_dir / "targets"
    if root.is_symlink() or not root.is_dir():
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        if folder.name in keep:
            continue
        if folder.is_symlink() or not folder.is_dir():
            log(f"[output] kept {folder}: not a folder edgeforge wrote")
            continue
        foreign = _foreign_entries(folder)
        if foreign:
            log(f"[output] kept {folder} from an earlier build: it holds files edgeforge did not write "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); remove it yourself if unneeded")
            continue
        shutil.rmtree(folder)
        removed.append(folder.name)
    if removed:
        log(f"[output] removed {len(removed)} target folder(s) of an earlier build not in this one: {', '.join(removed)}")
    return removed
