"""A batch of model inputs: one tensor (an image model) or a tuple in the model's argument order
(token ids and an attention mask). Everything that slices, moves or feeds inputs goes through here,
so training, evaluation and export treat one- and several-input models alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def rows(x: Inputs, idx: Any) -> Inputs:
    """Rows ``idx`` (an index tensor or a slice) of every input."""
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]


def count(x: Inputs) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


def call(model: Callable[..., torch.Tensor], x: Inputs) -> torch.Tensor:
    return model(*x) if isinstance(x, tuple) else model(x)


def clone(x: Inputs) -> Inputs:
    """A copy that owns its storage (a slice of a split would drag the whole split into a saved program)."""
    return tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone()


def as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def to_numpy(x: Inputs) -> np.ndarray | tuple[np.ndarray, ...]:
    return tuple(t.numpy() for t in x) if isinstance(x, tuple) else x.numpy()


def shapes(x: Inputs) -> str:
    """``[2, 1, 8, 8]`` or ``input 0 [2, 16], input 1 [2, 16]``, for messages."""
    if isinstance(x, tuple):
        return ", ".join(f"input {i} {list(t.shape)}" for i, t in enumerate(x))
    return str(list(x.shape))


def hash_into(h: Any, x: Inputs) -> None:
    for t in as_tuple(x):
        h.update(str(t.dtype).encode())
        h.update(t.contiguous().numpy().tobytes())
