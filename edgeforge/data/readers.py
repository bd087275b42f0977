"""Streamed readers: each turns a batch of row indices into checked, normalised input tensors.

Readers are pickled into DataLoader workers, so they hold paths and settings and open files lazily
in the process that reads (a memory map pickled by value would copy the whole array).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .arrays import Located, hash_file, locate_npy, locate_npz_member, read_rows
from .checks import stack_inputs, to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class ArrayReader:
    """Rows of an array on disk: ``member`` names an .npz entry, None means ``path`` is a .npy file."""

    source: str
    split: str
    path: Path
    member: str | None
    cfg: DataConfig
    _where: Located | None = field(default=None, repr=False)
    _fd: int | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a worker opens its own descriptor

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def read(self, idx: np.ndarray) -> torch.Tensor:
        if self._where is None:
            self._where = locate_npy(self.path) if self.member is None else locate_npz_member(self.path, self.member)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        rows = np.sort(idx)  # sequential reads; put back in the asked order below
        order = np.searchsorted(rows, idx)
        return to_tensor(self.source, self.split, read_rows(self._where, rows, self._fd)[order], self.cfg)

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.member}".encode())
        hash_file(self.path, h)
        return h.hexdigest()


@dataclass
class ImageReader:
    """Image files decoded and resized per batch (Pillow), labelled by their class folder."""

    source: str
    split: str
    files: list[Path]
    cfg: DataConfig

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return to_tensor(self.source, self.split, np.stack([decode(self.files[i], self.cfg) for i in idx]), self.cfg)

    def digest(self) -> str:
        h = hashlib.sha256()
        root = Path(self.source)
        for f in self.files:
            h.update(str(f.relative_to(root)).encode())
            hash_file(f, h)
        return h.hexdigest()


def decode(path: Path, cfg: DataConfig) -> np.ndarray:
    """One image as C x H x W uint8, resized to ``data.image_size``."""
    from PIL import Image

    assert cfg.image_size is not None  # the config refuses image_folder data without it
    h, w = cfg.image_size
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L" if cfg.grayscale else "RGB").resize((w, h)), dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types for unreadable files
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@dataclass
class DatasetReader:
    """A user's indexable dataset (``__len__`` and ``__getitem__`` returning ``(input, label)``)."""

    source: str
    split: str
    dataset: Any
    cfg: DataConfig
    input_digest: str = ""

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return self.read_pairs(idx)[0]

    def read_pairs(self, idx: np.ndarray) -> tuple[torch.Tensor, list[int]]:
        xs, ys = [], []
        for i in idx:
            try:
                item = self.dataset[int(i)]
                xs.append(np.asarray(item[0]))  # dtype checked with the rest: strings and complex are refused there
                ys.append(int(item[1]))
            except (TypeError, IndexError, ValueError, KeyError) as exc:
                raise DataError(f"{self.source}: item {int(i)} of split '{self.split}' is not an (input, label) "
                                f"pair ({exc})") from None
        stacked = stack_inputs(xs, f"{self.source}: split '{self.split}'")
        return to_tensor(self.source, self.split, stacked, self.cfg), ys

    def digest(self) -> str:
        return self.input_digest
