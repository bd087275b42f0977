"""Arrays on disk without reading them into memory: .npy files and uncompressed .npz members as memory maps."""

from __future__ import annotations

import zipfile
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


def map_npy(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f, str(path))
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def map_npz_member(path: Path, key: str) -> np.ndarray:
    """A read-only memory map of array ``key`` in an .npz written by ``np.savez`` (stored, not deflated)."""
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
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def hash_file(path: Path, h: object, chunk: int = 1 << 20) -> None:
    """Feed a file to a hashlib object a megabyte at a time (no whole-file read)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)  # type: ignore[attr-defined]
