"""PyTorch reference sessions: the teacher, the float student and the QAT simulation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..inputs import Batch, as_arrays
from .base import Session


class TorchSession(Session):
    """Float arrays run as float32; integer arrays (token ids, masks) keep their dtype."""

    def __init__(self, model: Callable[..., torch.Tensor], executor: str = "pytorch") -> None:
        self._model = model
        self.executor = f"{executor} (torch {torch.__version__})"

    def run(self, x: Batch) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32 if a.dtype.kind == "f" else a.dtype))
                   for a in as_arrays(x)]
        with torch.no_grad():
            return self._model(*tensors).float().numpy()
