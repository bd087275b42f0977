"""Core ML adapter: Core ML itself on macOS; elsewhere edgeforge's numpy reference interpreter.

Core ML has no Linux runtime. The reference interpreter runs the saved program op by op, so
accuracy and parity are checked on Linux too, but its timings say nothing about a device:
``measures_latency`` is False there and the pipeline reports "latency: needs macOS".
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..inputs import Batch, as_arrays, cast_input
from ..targets import TargetProfile
from .base import RUNTIMES, Runtime, Session


def coreml_framework_reason() -> str | None:
    """None when Core ML itself can run models here, else why not."""
    if platform.system() != "Darwin":
        return f"Core ML runs only on macOS (this host: {platform.system()})"
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as exc:
        return f"coremltools' Core ML bridge does not load ({exc})"
    return None


def _to_pixels(x: np.ndarray, target: TargetProfile) -> np.ndarray:
    """Normalised NCHW floats -> the 8-bit pixels an image input receives (the program re-applies scale/bias)."""
    opts = target.coreml
    bias = np.asarray(opts.image_bias, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.clip(np.rint((x - bias) / opts.image_scale), 0, 255)


class ReferenceSession(Session):
    measures_latency = False
    latency_note = "needs macOS (the reference interpreter's timings are not Core ML's)"

    def __init__(self, path: Path, target: TargetProfile) -> None:
        from ..coreml import ReferenceInterpreter

        t0 = time.perf_counter()
        self._interp = ReferenceInterpreter(path)  # raises UnsupportedOp (RuntimeUnavailable) up front
        self.load_seconds = time.perf_counter() - t0
        self._target = target
        shape = self._interp.input_type.shape
        self.fixed_batch = shape[0] if shape and shape[0] is not None else None
        self.executor = "edgeforge reference interpreter (numpy), Linux" if platform.system() == "Linux" \
            else f"edgeforge reference interpreter (numpy), {platform.system()}"

    def run(self, x: Batch) -> np.ndarray:
        arrays = as_arrays(x)
        inputs = self._interp.program.inputs
        if len(arrays) != len(inputs):
            raise ValueError(f"this Core ML program takes {len(inputs)} input(s) ({', '.join(n for n, _ in inputs)}), "
                             f"got {len(arrays)}")
        feed = {name: cast_input(a, tt.np_dtype if a.dtype.kind != "f" else np.float32, name)
                for (name, tt), a in zip(inputs, arrays, strict=True)}
        if self._target.coreml.input_type == "image":
            feed = {name: _to_pixels(a, self._target) for name, a in feed.items()}
        out = self._interp.run(feed)[self._interp.program.outputs[0]]
        return np.asarray(out, dtype=np.float32)


class CoremlSession(Session):
    measures_latency = True

    def __init__(self, path: Path, target: TargetProfile) -> None:
        ct = require("coremltools", "coreml")
        units = target.runtime.compute_units or "ALL"
        t0 = time.perf_counter()
        self._model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units))
        self.load_seconds = time.perf_counter() - t0
        spec = self._model.get_spec()
        inp = spec.description.input[0]
        self._inputs = [(i.name, i.type.multiArrayType.dataType) for i in spec.description.input]
        self._output = spec.description.output[0].name
        self._image = inp.type.WhichOneof("Type") == "imageType"
        self._target = target
        shape = list(inp.type.multiArrayType.shape) if not self._image else [1]
        self.fixed_batch = int(shape[0]) if shape else None
        self.executor = f"macOS Core ML (compute units {units})"

    def run(self, x: Batch) -> np.ndarray:
        arrays = as_arrays(x)
        if not self._image:
            from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

            # Core ML has no int64 inputs: the exporter declares token ids and masks int32.
            feed = {name: cast_input(a, np.int32 if code == ArrayFeatureType.INT32 else np.float32, name)
                    for (name, code), a in zip(self._inputs, arrays, strict=True)}
            return np.asarray(self._model.predict(feed)[self._output], dtype=np.float32)
        from PIL import Image

        outs = []
        for px in _to_pixels(np.asarray(arrays[0], dtype=np.float32), self._target).astype(np.uint8):
            img = Image.fromarray(px[0], "L") if px.shape[0] == 1 else Image.fromarray(px.transpose(1, 2, 0), "RGB")
            outs.append(np.asarray(self._model.predict({self._inputs[0][0]: img})[self._output], dtype=np.float32))
        return np.concatenate(outs)


class CoremlReferenceRuntime(Runtime):
    """Runs the saved ML program with edgeforge's numpy interpreter: accuracy yes, device timings no."""

    name = "reference"
    format = "coreml"
    extra = "coreml"
    module = "coremltools"
    package = "coremltools"
    priority = 20

    def _open(self, path: Path, target: TargetProfile) -> Session:
        return ReferenceSession(path, target)

    def inspect(self, path: Path) -> dict[str, Any]:
        from ..coreml import load_program, missing_kernels

        program = load_program(path)
        return {"ops": program.histogram(), "opset": program.opset,
                "ops_without_reference_kernel": missing_kernels(program)}


class CoremlFrameworkRuntime(CoremlReferenceRuntime):
    """Core ML itself (macOS): predictions on the profile's compute units."""

    name = "coremltools"
    priority = 0

    def unavailable_reason(self) -> str | None:
        return super().unavailable_reason() or coreml_framework_reason()

    def _open(self, path: Path, target: TargetProfile) -> Session:
        return CoremlSession(path, target)


RUNTIMES.add("coreml:reference", CoremlReferenceRuntime)
RUNTIMES.add("coreml:coremltools", CoremlFrameworkRuntime)
