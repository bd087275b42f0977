"""Arrays on disk without reading them into memory: .npy files and uncompressed .npz members.

``locate_*`` finds where an array's bytes start; ``read_rows`` reads chosen rows with ``os.pread``
(runs of consecutive rows in one call), so a pass over a large array keeps no pages of it resident
(a memory map's touched pages count towards the process's memory until the kernel evicts them).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError


def _npy_header(f: object, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)  # type: ignore[arg-type]
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)  # type: ignore[arg-type]
    except ValueError as exc:
        raise DataError(f"{where}: not a .npy array ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects; save numeric arrays (objects would need pickle)")
    return tuple(shape), bool(fortran), dtype


@dataclass(frozen=True)
class Located:
    """An array's bytes in a file: C order from ``offset``."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    def map(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
                         order="F" if self.fortran else "C")


def locate_npy(path: Path) -> Located:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f, str(path))
        return Located(path, f.tell(), shape, dtype, fortran)


def map_npy(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file."""
    return locate_npy(path).map()


def read_rows(loc: Located, rows: np.ndarray, fd: int) -> np.ndarray:
    """Rows ``rows`` (sorted, may repeat) of a C-order array, read from open file ``fd``."""
    if loc.fortran:  # rows are not contiguous on disk: go through a map
        return np.asarray(loc.map()[rows])
    row_bytes = int(np.prod(loc.shape[1:], dtype=np.int64)) * loc.dtype.itemsize
    out = np.empty((len(rows), *loc.shape[1:]), dtype=loc.dtype)
    flat = out.reshape(len(rows), -1).view(np.uint8)
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j] == rows[j - 1] + 1:
            j += 1
        data = os.pread(fd, row_bytes * (j - i), loc.offset + int(rows[i]) * row_bytes)
        if len(data) != row_bytes * (j - i):
            raise DataError(f"{loc.path}: the file ends before row {int(rows[j - 1])} (truncated?)")
        flat[i:j] = np.frombuffer(data, dtype=np.uint8).reshape(j - i, row_bytes)
        i = j
    return out


def map_npz_member(path: Path, key: str) -> np.ndarray:
    """A read-only memory map of array ``key`` in an .npz written by ``np.savez`` (stored, not deflated)."""
    return locate_npz_member(path, key).map()


def locate_npz_member(path: Path, key: str) -> Located:
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.removesuffix(".npy"): n for n in z.namelist()}
            if key not in names:
                raise DataError(f"{path}: no array named {key} (has: {', '.join(names) or 'none'}); "
                                "set data.x_key / data.y_key")
            info = z.getinfo(names[key])
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(f"{path}: array {key} is compressed, so it cannot be memory-mapped; write it with "
                        "np.savez (not savez_compressed), use kind: npy, or set data.stream: false")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise DataError(f"{path}: damaged zip entry for {key}")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _npy_header(f, f"{path}:{key}")
        return Located(path, f.tell(), shape, dtype, fortran)


def hash_file(path: Path, h: object, chunk: int = 1 << 20) -> None:
    """Feed a file to a hashlib object a megabyte at a time (no whole-file read)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)  # type: ignore[attr-defined]
