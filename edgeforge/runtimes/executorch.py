"""ExecuTorch adapter: the runtime's Python bindings (``executorch.runtime``) with the XNNPACK delegate.

A .pte program is memory-planned for one input shape, so the session has a fixed batch and
``run_all`` pads the last chunk. The thread count is the XNNPACK threadpool's, which is global to
the process: each session sets it when opened. Latency on a device: over SSH with the device's own
``executorch`` Python package, over adb with ExecuTorch's ``xnn_executor_runner`` binary.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, require
from ..inputs import Batch, InputSpec, as_arrays, cast_input
from ..targets import TargetProfile
from .base import RUNTIMES, Runtime, Session, device_inputs

if TYPE_CHECKING:
    from ..config import ValidationConfig


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Drop what C++ writes to fd 2 meanwhile (the threadpool's ``cpuinfo_utils.cpp`` lines on every load).

    EDGEFORGE_VERBOSE=1 keeps them.
    """
    if os.environ.get("EDGEFORGE_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def set_threads(threads: int) -> None:
    """Size XNNPACK's threadpool (process-wide); the bindings mark this API experimental."""
    portable = require("executorch.extension.pybindings.portable_lib", "executorch")
    reset = getattr(portable, "_unsafe_reset_threadpool", None)
    with native_stderr_silenced():  # the first touch of the threadpool probes the CPU, loudly
        if reset is not None and portable._threadpool_get_thread_count() != threads:
            reset(threads)


class ExecutorchSession(Session):
    executor = "executorch"

    def __init__(self, path: Path, target: TargetProfile) -> None:
        rt = require("executorch.runtime", "executorch")
        self._torch = require("torch", "executorch")
        set_threads(target.runtime.threads)
        t0 = time.perf_counter()
        with native_stderr_silenced():
            program = rt.Runtime.get().load_program(path)
            self._method = program.load_method("forward")
        self.load_seconds = time.perf_counter() - t0
        self._program = program  # the method borrows the program's buffers
        meta = self._method.metadata
        self._inputs = [_tensor_meta(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
        self.input_shape = self._inputs[0][0]
        self.fixed_batch = self.input_shape[0]
        backends = ", ".join(describe_pte(path.read_bytes())["delegates"]) or "portable kernels"
        self.executor = (f"executorch {md.version('executorch')} ({backends}, "
                         f"{target.runtime.threads} thread(s))")

    def run(self, x: Batch) -> np.ndarray:
        arrays = as_arrays(x)
        if len(arrays) != len(self._inputs):
            raise ValueError(f"this ExecuTorch program takes {len(self._inputs)} input(s), got {len(arrays)}")
        feeds = []
        for i, (a, (shape, dtype)) in enumerate(zip(arrays, self._inputs, strict=True)):
            if tuple(a.shape) != shape:
                raise ValueError(f"this ExecuTorch program takes input {i} of shape {list(shape)}, got {list(a.shape)}")
            feeds.append(self._torch.from_numpy(cast_input(a, dtype, f"#{i}")))
        out = self._method.execute(feeds)[0]
        return np.array(out.detach().numpy(), dtype=np.float32)


# ExecuTorch's ScalarType codes (c10 numbering) for the input dtypes a program can take.
_SCALAR_TYPES = {6: np.float32, 3: np.int32, 4: np.int64, 5: np.float16, 1: np.int8, 0: np.uint8, 11: np.bool_}


def _tensor_meta(meta: Any) -> tuple[tuple[int, ...], Any]:
    """(shape, numpy dtype) of one program input."""
    return tuple(int(v) for v in meta.sizes()), _SCALAR_TYPES.get(int(meta.dtype()), np.float32)


def describe_pte(data: bytes) -> dict[str, Any]:
    """What the runtime will execute, read back from the .pte: delegate calls and portable kernels.

    Delegated subgraphs are opaque blobs in the file, so their ops are counted at export time
    (``info.delegation``); the file itself says which backends run them and which kernels run outside.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(data).program.execution_plan[0]
    kernels: Counter[str] = Counter()
    delegates: Counter[str] = Counter()
    for chain in plan.chains:
        for instr in chain.instructions:
            args = instr.instr_args
            if type(args).__name__ == "KernelCall":
                op = plan.operators[args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
            elif type(args).__name__ == "DelegateCall":
                delegates[plan.delegates[args.delegate_index].id] += 1
    return {"delegates": dict(sorted(delegates.items())), "portable_kernels": dict(sorted(kernels.items())),
            "delegate_calls": sum(delegates.values()), "kernel_calls": sum(kernels.values())}


class ExecutorchRuntime(Runtime):
    name = "executorch"
    format = "executorch"
    extra = "executorch"
    module = "executorch"
    package = "executorch"
    ssh_bench = "executorch"
    adb_bench = True  # measure_on_device runs ExecuTorch's executor_runner over adb

    def unavailable_reason(self) -> str | None:
        missing = super().unavailable_reason()
        if missing:
            return missing
        try:
            import executorch.runtime  # noqa: F401
        except Exception as exc:  # a wheel without its native bindings is unavailable too
            return f"executorch.runtime cannot be imported: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return None

    def _open(self, path: Path, target: TargetProfile) -> Session:
        return ExecutorchSession(path, target)

    def inspect(self, path: Path) -> dict[str, object]:
        try:
            return dict(describe_pte(path.read_bytes()))
        except Exception as exc:  # the private deserializer moved: the artifact still runs
            return {"unreadable": f"{type(exc).__name__}: {str(exc)[:160]}"}

    def measure_on_device(self, target: TargetProfile, artifact: Path, validation: ValidationConfig,
                          inputs: Sequence[InputSpec] = ()) -> dict[str, Any]:
        spec = target.latency
        if spec.measured_on != "adb" or spec.adb is None:
            return super().measure_on_device(target, artifact, validation, inputs)
        from ..exporters.executorch import options_for
        from ..remote.adb import AdbDevice, measure_adb_executorch

        a = spec.adb
        runner = options_for(target).adb_runner
        if not runner.startswith("/"):
            raise ConfigError("executorch.adb_runner must be an absolute path on the device", target=target.name,
                              key="executorch.adb_runner", fix="e.g. /data/local/tmp/xnn_executor_runner")
        device = AdbDevice(serial=a.serial, benchmark_model=runner, workdir=a.workdir, adb=a.adb)
        return measure_adb_executorch(artifact, device=device, threads=target.runtime.threads,
                                      warmup=validation.warmup, runs=validation.runs,
                                      inputs=device_inputs(inputs, target)).as_dict()


RUNTIMES.add("executorch:executorch", ExecutorchRuntime)
