"""Teacher outputs computed once: logits on disk, memory-mapped, keyed by everything that decides them.

A slow teacher (a MiniLM encoder on 2 cores, a ResNet over a hundred thousand images) would
otherwise run again in every build and in every training stage. The key covers the teacher
(weights and code), the split's content and transform, the device kind and autocast precision
(bf16 logits are not fp32 logits) and edgeforge's own code; the file is written atomically, and a
file whose shape does not match is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cache import atomic_write_bytes, code_digest

if TYPE_CHECKING:
    from .data import SplitBase
    from .training import TrainContext


def default_root() -> Path:
    env = os.environ.get("EDGEFORGE_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "teacher-outputs"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeforge" / "teacher-outputs"


@dataclass
class TeacherStore:
    root: Path
    identity: dict[str, Any]  # teacher digest, data transform, device kind, precision
    log: Callable[[str], None] | None = None
    hits: int = 0
    misses: int = 0

    def key(self, split: SplitBase) -> str:
        blob = json.dumps({**self.identity, "split": split.name, "data": split.digest(), "code": code_digest()},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def logits(self, teacher: Callable[[torch.Tensor], torch.Tensor], split: SplitBase, ctx: TrainContext
               ) -> torch.Tensor:
        path = self.root / f"{self.key(split)}.npy"
        cached = _read(path, len(split))
        # decided together: a rank computing alone would wait forever in the gather of the others' rows
        if ctx.ranks.all_true(cached is not None) and cached is not None:
            self.hits += 1
            self._say(ctx, f"teacher outputs for {len(split)} {split.name} samples read from {path}")
            return cached
        self.misses += 1
        logits = self._compute(teacher, split, ctx)
        if ctx.ranks.leader:
            _write(path, logits.numpy())
        ctx.ranks.barrier()
        return logits

    def _compute(self, teacher: Callable[[torch.Tensor], torch.Tensor], split: SplitBase, ctx: TrainContext
                 ) -> torch.Tensor:
        from .training import compute_teacher_logits

        self._say(ctx, f"computing teacher outputs for {len(split)} {split.name} samples (cached for later builds)")
        return compute_teacher_logits(teacher, split, ctx, report=True)

    def _say(self, ctx: TrainContext, text: str) -> None:
        if self.log is not None and ctx.ranks.leader:
            self.log(f"[teacher] {text}")


def _read(path: Path, n: int) -> torch.Tensor | None:
    """The cached logits as a read-only memory map, or None when missing or not what this split needs."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return None
    if arr.ndim != 2 or arr.shape[0] != n or arr.dtype != np.float32:
        return None
    with warnings.catch_warnings():  # read-only on purpose: nothing writes into the cache
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(arr))  # rows are read when a batch indexes them


def _write(path: Path, logits: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, logits.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
