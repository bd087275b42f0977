"""Resumable epochs: the state of a training loop after its last finished epoch.

A stage's checkpoint lives in the engine's ``partial`` folder of the stage's key (see
``StageCache.partial``), so a rerun with the same inputs finds it and a changed config does not;
the engine deletes it when the stage completes. Written atomically after every epoch by rank 0,
read with ``weights_only=True`` (the file is data, never code) and handed to every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .cache import save_torch
from .distributed import Ranks

FILE = "epoch.pt"


class EpochCheckpoint:
    def __init__(self, folder: Path | None, ranks: Ranks | None = None) -> None:
        self.path = folder / FILE if folder is not None else None
        self.ranks = ranks or Ranks()

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None and self.ranks.leader:
            save_torch(state, self.path)

    def load(self) -> dict[str, Any] | None:
        """The last saved state (rank 0's, on every rank), or None to start from the first epoch."""
        state = None
        if self.path is not None and self.ranks.leader and self.path.is_file():
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception:  # a file torch cannot read as plain data: start over rather than trust it
                state = None
        return self.ranks.broadcast_object(state) if self.ranks.active else state
