"""PyTorch reference sessions: the teacher, the float student and the QAT simulation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import Session


class TorchSession(Session):
    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], executor: str = "pytorch") -> None:
        self._model = model
        self.executor = f"{executor} (torch {torch.__version__})"

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
