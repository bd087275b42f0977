"""The runtime interface: open an artifact in its own runtime and run batches of its inputs.

A batch is one array (a single-input model, float32 NCHW for images) or a tuple of arrays in the
model's input order (``edgeforge.inputs``: token ids and an attention mask, several float inputs).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ConfigError, RuntimeUnavailable
from ..inputs import Batch, InputSpec, as_arrays
from ..registry import Registry
from ..targets import TargetProfile

if TYPE_CHECKING:
    from ..config import ValidationConfig
    from ..remote import BenchInput


class Session(ABC):
    """A loaded artifact. ``run`` takes a batch (one array, or a tuple in input order) and returns float32 logits.

    Adapters own every format difference (layout transposes and int8 scaling of float image inputs,
    integer input dtypes, static batch sizes), so validation is written once over this interface.
    """

    executor: str = ""
    fixed_batch: int | None = None  # None: any batch size
    load_seconds: float = 0.0
    measures_latency: bool = True  # False where timings would not be the device's (an emulator)
    latency_note: str = ""

    @abstractmethod
    def run(self, x: Batch) -> np.ndarray: ...

    def run_all(self, x: Batch, batch_size: int = 256) -> np.ndarray:
        """Run a whole split in chunks; a fixed-batch artifact gets its last chunk padded with its last row."""
        arrays = as_arrays(x)
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ValueError(f"inputs have different lengths: {[len(a) for a in arrays]}")
        step = self.fixed_batch or batch_size
        outs = []
        for i in range(0, n, step):
            chunks = [a[i : i + step] for a in arrays]
            rows = len(chunks[0])
            if self.fixed_batch and rows < self.fixed_batch:
                chunks = [np.concatenate([c, np.repeat(c[-1:], self.fixed_batch - rows, axis=0)]) for c in chunks]
            outs.append(self.run(chunks[0] if len(chunks) == 1 else tuple(chunks))[:rows])
        return np.concatenate(outs).astype(np.float32)


class Runtime(ABC):
    """Runs one format's artifacts on this host, and knows its on-device benchmark tools.

    Registered as ``"<format>:<name>"``; ``priority`` orders the runtimes of one format (lower
    first) when a profile does not name one.
    """

    name: ClassVar[str]
    format: ClassVar[str]
    extra: ClassVar[str]
    module: ClassVar[str]  # the Python module the runtime needs
    package: ClassVar[str]  # its pip name, for the install hint
    priority: ClassVar[int] = 10
    ssh_bench: ClassVar[str | None] = None  # the format name remote/device_bench.py runs on a device over SSH
    adb_bench: ClassVar[bool] = False  # TFLite's benchmark_model on an Android device

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

    def measure_on_device(self, target: TargetProfile, artifact: Path, validation: ValidationConfig,
                          inputs: Sequence[InputSpec] = ()) -> dict[str, Any]:
        """Latency on the profile's device (``latency.measured_on``); raises EdgeforgeError subclasses.

        ``inputs`` (the carrier's, in forward order) are each fed and checked on the device; left empty,
        the device feeds the artifact's own input shapes unchecked.
        """
        spec = target.latency
        feeds = device_inputs(inputs, target)
        if spec.measured_on == "ssh" and spec.ssh is not None and self.ssh_bench:
            from ..remote.ssh import SshDevice, measure_ssh

            s = spec.ssh
            device = SshDevice(host=s.host, user=s.user, port=s.port, key=Path(s.key).expanduser() if s.key else None,
                               python=s.python, workdir=s.workdir, connect_timeout=s.connect_timeout,
                               known_hosts=Path(s.known_hosts).expanduser() if s.known_hosts else None)
            return measure_ssh(artifact, device=device, format=self.ssh_bench, threads=target.runtime.threads,  # type: ignore[arg-type]
                               warmup=validation.warmup, runs=validation.runs, inputs=feeds).as_dict()
        if spec.measured_on == "adb" and spec.adb is not None and self.adb_bench:
            from ..remote.adb import AdbDevice, measure_adb

            a = spec.adb
            dev = AdbDevice(serial=a.serial, benchmark_model=a.benchmark_model, workdir=a.workdir, adb=a.adb)
            return measure_adb(artifact, device=dev, threads=target.runtime.threads, warmup=validation.warmup,
                               runs=validation.runs, inputs=feeds).as_dict()
        raise ConfigError(f"{self.format} artifacts cannot be timed with latency.measured_on: {spec.measured_on}",
                          target=target.name, fix="set latency.measured_on: host or pick a format with a device runner")


def device_inputs(inputs: Sequence[InputSpec], target: TargetProfile) -> tuple[BenchInput, ...]:
    """What a device benchmark feeds each model input of ``target``'s artifact, in the model's order.

    Float inputs take the profile's input dtype (int8/uint8 when the artifact's I/O is quantized) and
    image inputs its layout (NHWC in channel-last LiteRT files); integer inputs keep their dtype and get
    a value range: token ids stay inside the vocabulary, masks are all ones. A dynamic batch is timed at 1.
    """
    from ..remote import BenchInput

    batch = target.input.batch if isinstance(target.input.batch, int) else 1
    out = []
    for s in inputs:
        shape = (batch, *s.shape)
        if s.is_image and target.input.layout == "NHWC":
            shape = (batch, *s.shape[1:], s.shape[0])
        if s.is_float:
            out.append(BenchInput(s.name, shape, target.input.dtype))
        else:
            low, high = (0, s.vocab_size - 1) if s.vocab_size is not None else (1, 1)
            out.append(BenchInput(s.name, shape, s.dtype, (low, high)))
    return tuple(out)


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")  # keys: "<format>:<name>"
