"""One build at a time per output folder: an advisory lock released when the process ends (even on SIGKILL).

The lock file is opened without following links and only if it is a regular file, so a symlink
planted at ``.edgeforge.lock`` never truncates what it points to. It is removed on a clean exit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType

from .errors import EdgeforgeError


class OutputLock:
    def __init__(self, folder: Path) -> None:
        self.path = folder / ".edgeforge.lock"
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EdgeforgeError(f"output: {self.path} is a symbolic link; remove it (edgeforge never follows it)") from None
            raise EdgeforgeError(f"output: cannot write to {self.path.parent} ({exc.strerror or exc})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise EdgeforgeError(f"output: {self.path} is not a regular file; remove it")
        return fd

    def _busy(self, fd: int) -> EdgeforgeError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return EdgeforgeError(
            f"output folder {self.path.parent} is in use by another edgeforge build (pid {holder}); "
            "wait for it to finish or set a different 'output'"
        )

    def __enter__(self) -> OutputLock:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(fd) from None
        # The holder unlinks the file on exit: a lock taken on an unlinked inode guards nothing.
        try:
            same = os.lstat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise self._busy(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass  # already gone or read-only: the flock is what matters
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
