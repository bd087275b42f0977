"""onnxruntime adapter: CPU execution provider with the target's thread count."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import RuntimeUnavailable, require
from ..inputs import Batch, as_arrays, cast_input
from ..targets import TargetProfile
from .base import RUNTIMES, Runtime, Session

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(float16)": np.float16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


class OrtSession(Session):
    executor = "onnxruntime"

    def __init__(self, path: Path, target: TargetProfile) -> None:
        ort = require("onnxruntime", "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = target.runtime.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        available = set(ort.get_available_providers())
        missing = [p for p in target.runtime.providers if p not in available]
        if missing:
            raise RuntimeUnavailable(
                f"target {target.name}: onnxruntime here lacks {', '.join(missing)} (has {', '.join(sorted(available))})"
            )
        t0 = time.perf_counter()
        self._sess = ort.InferenceSession(str(path), opts, providers=target.runtime.providers)
        self.load_seconds = time.perf_counter() - t0
        self._inputs = [(i.name, _ORT_DTYPES.get(i.type, np.float32)) for i in self._sess.get_inputs()]
        b = self._sess.get_inputs()[0].shape[0]
        self.fixed_batch = b if isinstance(b, int) else None
        self.executor = f"onnxruntime {ort.__version__} ({target.runtime.providers[0]}, {target.runtime.threads} thread(s))"

    def run(self, x: Batch) -> np.ndarray:
        arrays = as_arrays(x)
        if len(arrays) != len(self._inputs):
            raise ValueError(f"this ONNX model takes {len(self._inputs)} input(s) "
                             f"({', '.join(n for n, _ in self._inputs)}), got {len(arrays)}")
        feed = {name: cast_input(a, dtype, name) for (name, dtype), a in zip(self._inputs, arrays, strict=True)}
        return self._sess.run(None, feed)[0]


def optimized_ops(path: Path) -> dict[str, int]:
    """The ops onnxruntime actually runs after its graph fusions (e.g. QLinearConv for QDQ Conv)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ops: dict[str, int] = {}
        for n in onnx.load(str(out)).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    format = "onnx"
    extra = "onnx"
    module = "onnxruntime"
    package = "onnxruntime"
    ssh_bench = "onnx"

    def _open(self, path: Path, target: TargetProfile) -> Session:
        return OrtSession(path, target)

    def inspect(self, path: Path) -> dict[str, object]:
        return {"ops_after_fusion": optimized_ops(path)}


RUNTIMES.add("onnx:onnxruntime", OnnxRuntime)
