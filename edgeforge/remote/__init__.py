"""Latency where the device is: run the artifact on a remote device and bring the timings back.

Two runners, each one small module that shells out to a standard client (no new dependency):

- ``ssh``: Linux boards and servers with Python + onnxruntime / ai-edge-litert / executorch; copies the artifact
  and ``device_bench.py`` with scp, runs it, parses its JSON line, removes the files.
- ``adb``: Android devices with TFLite's ``benchmark_model`` (or ExecuTorch's ``executor_runner``) binary
  already on the device.

Both return a ``DeviceLatency`` whose ``as_dict()`` has the keys of ``edgeforge.validate.Latency``
(what the manifest and the gate read) plus what the device said about itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EdgeforgeError
from ..records import Latency


@dataclass(frozen=True)
class BenchInput:
    """One model input as a device benchmark feeds it: the full shape (batch first), the artifact's dtype, and
    for integer inputs the values to draw, both ends inclusive (token ids ``(0, vocab_size - 1)``, a mask
    ``(1, 1)``); None draws the runtime's default random values (float and quantized image inputs)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    value_range: tuple[int, int] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [int(d) for d in self.shape], "dtype": self.dtype,
                "value_range": None if self.value_range is None else [int(v) for v in self.value_range]}


class RemoteError(EdgeforgeError):
    """A remote latency run failed; the message names the device and the fix, on one line."""


class DeviceUnreachable(RemoteError):
    """No connection: unknown host, nothing listening, timeout, adb device absent or offline."""


class DeviceAuthFailed(RemoteError):
    """Connected, but the device refused the key (or the adb authorisation)."""


class DeviceRuntimeMissing(RemoteError):
    """The device lacks what the run needs: its Python, numpy, the runtime, or benchmark_model."""


class DeviceBenchFailed(RemoteError):
    """The benchmark ran but failed, timed out, or printed nothing that can be parsed."""


DeviceLatency = Latency  # one latency record for the host and every device


def one_line(text: str, limit: int = 300) -> str:
    """Collapse a tool's (multi-line) message so an error stays one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
