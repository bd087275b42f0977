"""LiteRT adapter: ai_edge_litert's Interpreter (XNNPACK on CPU) with the target's thread count.

The session takes a batch (float32 NCHW, or a tuple of arrays in the model's input order) and returns
float32 logits whatever the file's I/O: it transposes 4-D float inputs to NHWC when the file is
channel-last, quantizes float inputs the file takes as int8/uint8, casts integer inputs (token ids,
masks) to the file's integer type unscaled, dequantizes quantized outputs with the scale and
zero-point stored in the file, and resizes to the file's batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..inputs import Batch, as_arrays, cast_input
from ..targets import TargetProfile
from .base import RUNTIMES, Runtime, Session


class LiteRTSession(Session):
    executor = "ai-edge-litert"

    def __init__(self, path: Path, target: TargetProfile, **interpreter_options: Any) -> None:
        """``interpreter_options`` go to the Interpreter as they are (the layer report's debugging options)."""
        interp_mod = require("ai_edge_litert.interpreter", "tflite")
        t0 = time.perf_counter()
        self._it = interp_mod.Interpreter(model_path=str(path), num_threads=target.runtime.threads,
                                          **interpreter_options)
        self._it.allocate_tensors()
        self.load_seconds = time.perf_counter() - t0
        self._ins = self._it.get_input_details()  # in the model's input order (the subgraph's)
        self._in = self._ins[0]
        self._out = self._it.get_output_details()[0]
        self.nhwc = target.input.layout == "NHWC"
        sig = [int(v) for v in self._in.get("shape_signature", self._in["shape"])]
        self.fixed_batch = None if sig[0] == -1 else int(self._in["shape"][0])
        self._batch = int(self._in["shape"][0])
        import importlib.metadata as md

        self.executor = f"ai-edge-litert {md.version('ai-edge-litert')} (XNNPACK, {target.runtime.threads} thread(s))"

    @property
    def interpreter(self) -> Any:
        return self._it

    @staticmethod
    def _scale_zp(details: dict) -> tuple[float, int]:
        scale, zp = details["quantization"]
        return float(scale), int(zp)

    def _prepare(self, x: np.ndarray, details: dict) -> np.ndarray:
        dtype = np.dtype(details["dtype"])
        if x.dtype.kind != "f":  # token ids / masks: never scaled, only narrowed to the file's int type
            return cast_input(x, dtype, details["name"])
        x = np.asarray(x, dtype=np.float32)
        if self.nhwc and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        if dtype != np.float32:
            scale, zp = self._scale_zp(details)
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)
        return np.ascontiguousarray(x)

    def run(self, x: Batch) -> np.ndarray:
        arrays = as_arrays(x)
        if len(arrays) != len(self._ins):
            raise ValueError(f"this LiteRT file takes {len(self._ins)} input(s), got {len(arrays)}")
        feeds = [self._prepare(a, d) for a, d in zip(arrays, self._ins, strict=True)]
        if len(feeds[0]) != self._batch:
            if self.fixed_batch is not None:
                raise ValueError(f"this LiteRT file takes batches of {self.fixed_batch}, got {len(feeds[0])}")
            for d, f in zip(self._ins, feeds, strict=True):
                self._it.resize_tensor_input(d["index"], list(f.shape))
            self._it.allocate_tensors()
            self._batch = len(feeds[0])
            self._out = self._it.get_output_details()[0]
        for d, f in zip(self._ins, feeds, strict=True):
            self._it.set_tensor(d["index"], f)
        self._it.invoke()
        y = self._it.get_tensor(self._out["index"])
        if self._out["dtype"] != np.float32:
            scale, zp = self._scale_zp(self._out)
            y = (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32, copy=True)


class LiteRTRuntime(Runtime):
    name = "litert"
    format = "tflite"
    extra = "tflite"
    module = "ai_edge_litert"
    package = "ai-edge-litert"
    ssh_bench = "tflite"
    adb_bench = True

    def unavailable_reason(self) -> str | None:
        missing = super().unavailable_reason()
        if missing:
            return missing
        try:
            importlib.import_module("ai_edge_litert.interpreter")
        except Exception as exc:  # a broken install (e.g. a numpy ABI mismatch) is unavailable too
            return f"ai_edge_litert.interpreter cannot be imported: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return None

    def _open(self, path: Path, target: TargetProfile) -> Session:
        return LiteRTSession(path, target)


RUNTIMES.add("tflite:litert", LiteRTRuntime)
