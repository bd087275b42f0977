"""A split of the data: labels always in memory, inputs either in memory or read batch by batch.

Training, evaluation and teacher inference go through ``load`` / ``batches`` only, so a split of a
million images costs one batch of memory per worker, never the whole split. ``Split`` holds its
inputs as one tensor (the small-data path, and what tests build by hand); ``StreamedSplit`` reads
them through a ``torch.utils.data.DataLoader`` whose workers decode whole batches.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import DataError
from .batch import Inputs, as_tuple, hash_into, rows

Rows = slice | torch.Tensor | None


class SplitBase(ABC):
    """``y``: int64 labels of every sample; inputs come from ``take`` (float32 N x C x H x W, normalised)."""

    name: str
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input's shape without the batch dimension."""
        return tuple(as_tuple(self.head(1))[0].shape[1:])

    @abstractmethod
    def take(self, idx: torch.Tensor) -> Inputs:
        """The inputs of rows ``idx`` (in that order)."""

    @abstractmethod
    def load(self, index_batches: Sequence[torch.Tensor], workers: int = 0
             ) -> Iterator[tuple[torch.Tensor, Inputs, torch.Tensor]]:
        """(indices, inputs, labels) for each batch of indices, in order."""

    @abstractmethod
    def digest(self) -> str: ...

    def head(self, n: int) -> Inputs:
        return self.take(torch.arange(min(n, len(self))))

    def batches(self, batch_size: int, rows: Rows = None, workers: int = 0
                ) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """(inputs, labels) of ``rows`` (default: all) in order, ``batch_size`` at a time."""
        idx = _rows(rows, len(self))
        chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        for _, x, y in self.load(chunks, workers):
            yield x, y

    def subset(self, idx: torch.Tensor, name: str) -> Split:
        """Rows ``idx`` held in memory (calibration sets, probes)."""
        return Split(name, self.take(idx), self.y[idx])


def _rows(rows: Rows, n: int) -> torch.Tensor:
    if rows is None:
        return torch.arange(n)
    if isinstance(rows, slice):
        return torch.arange(n)[rows]
    return rows


@dataclass
class Split(SplitBase):
    name: str
    x: Inputs  # float32 N x C x H x W, or a tuple of inputs (token ids, mask) in the model's order
    y: torch.Tensor  # int64, N

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(as_tuple(self.x)[0].shape[1:])

    def take(self, idx: torch.Tensor) -> Inputs:
        return rows(self.x, idx)

    def load(self, index_batches: Sequence[torch.Tensor], workers: int = 0
             ) -> Iterator[tuple[torch.Tensor, Inputs, torch.Tensor]]:
        for idx in index_batches:
            yield idx, rows(self.x, idx), self.y[idx]

    def digest(self) -> str:
        h = hashlib.sha256()
        if isinstance(self.x, tuple):
            hash_into(h, self.x)
        else:
            h.update(self.x.numpy().tobytes())  # as before named inputs: image builds keep their cache keys
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()


class Reader(Protocol):
    """Reads raw inputs of a streamed split. Picklable: workers get a copy and open files themselves."""

    source: str

    def read(self, idx: np.ndarray) -> torch.Tensor:
        """Inputs of rows ``idx``, checked and normalised (DataError on bad samples)."""
        ...

    def digest(self) -> str: ...


class _Batches(torch.utils.data.Dataset[Any]):
    """A dataset whose items are whole batches: the sampler yields index tensors, a worker decodes each.

    Errors come back as values: a DataError raised inside a worker would reach the user wrapped in a
    traceback dump; this way the main process raises it as the one line it is.
    """

    def __init__(self, reader: Reader, y: torch.Tensor) -> None:
        self.reader, self.y = reader, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | str, torch.Tensor]:
        try:
            return idx, self.reader.read(idx.numpy()), self.y[idx]
        except DataError as exc:
            return idx, str(exc), self.y[idx]


class StreamedSplit(SplitBase):
    """Inputs read from disk (or a user's dataset) a batch at a time; only the labels stay in memory."""

    def __init__(self, name: str, reader: Reader, y: torch.Tensor) -> None:
        self.name, self.reader, self.y = name, reader, y
        self._digest: str | None = None

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return _unwrap(self.reader.read(idx.numpy()) if len(idx) else torch.empty(0))

    def load(self, index_batches: Sequence[torch.Tensor], workers: int = 0
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if workers == 0:
            for idx in index_batches:
                yield idx, self.take(idx), self.y[idx]
            return
        loader = torch.utils.data.DataLoader(_Batches(self.reader, self.y), sampler=list(index_batches),
                                             batch_size=None, num_workers=workers, prefetch_factor=2)
        for idx, x, y in loader:
            yield idx, _unwrap(x), y

    def digest(self) -> str:
        if self._digest is None:  # reading every file once per build, not once per stage
            h = hashlib.sha256(self.reader.digest().encode())
            h.update(self.y.numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest


def _unwrap(x: torch.Tensor | str) -> torch.Tensor:
    if isinstance(x, str):
        raise DataError(x)
    return x
