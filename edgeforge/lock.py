"""One build at a time per output folder: an advisory lock released when the process ends (even on SIGKILL)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import EdgeforgeError


class OutputLock:
    def __init__(self, folder: Path) -> None:
        self.path = folder / ".edgeforge.lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _still_linked(fd, self.path):  # the holder released and unlinked it between our open and flock
                raise BlockingIOError
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise EdgeforgeError(
                f"output folder {self.path.parent} is in use by another edgeforge build (pid {holder}); "
                "wait for it to finish or set a different 'output'"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            # unlinked while still held, so no later build finds a lock file naming a dead pid
            if _still_linked(self._fd, self.path):
                self.path.unlink()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _still_linked(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False
