"""The runtime interface: open an artifact in its own runtime and run float32 NCHW batches."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import RuntimeUnavailable
from ..registry import Registry
from ..targets import TargetProfile


class Session(ABC):
    """A loaded artifact. ``run`` takes float32 NCHW and returns float32 logits.

    Adapters own every format difference (layout transposes, int8 input/output scaling, static
    batch sizes), so validation is written once over this interface.
    """

    executor: str = ""
    fixed_batch: int | None = None  # None: any batch size
    load_seconds: float = 0.0
    measures_latency: bool = True  # False where timings would not be the device's (an emulator)
    latency_note: str = ""

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray: ...

    def run_all(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        step = self.fixed_batch or batch_size
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if self.fixed_batch and len(chunk) < self.fixed_batch:
                pad = np.repeat(chunk[-1:], self.fixed_batch - len(chunk), axis=0)
                outs.append(self.run(np.concatenate([chunk, pad]))[: len(chunk)])
            else:
                outs.append(self.run(chunk))
        return np.concatenate(outs).astype(np.float32)


class Runtime(ABC):
    name: ClassVar[str]
    format: ClassVar[str]
    extra: ClassVar[str]
    module: ClassVar[str]  # the Python module the runtime needs
    package: ClassVar[str]  # its pip name, for the install hint

    def unavailable_reason(self) -> str | None:
        """None when this host can run the format, else why not (shown in the manifest)."""
        if importlib.util.find_spec(self.module) is None:
            return f"{self.package} is not installed (pip install 'edgeforge[{self.extra}]')"
        return None

    def open(self, path: Path, target: TargetProfile) -> Session:
        """Load the artifact; RuntimeUnavailable when this host cannot run it."""
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        return self._open(path, target)

    @abstractmethod
    def _open(self, path: Path, target: TargetProfile) -> Session: ...

    def inspect(self, path: Path) -> dict[str, object]:
        """What the runtime makes of the artifact (e.g. the kernels it fused); empty if nothing to say."""
        return {}


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")
