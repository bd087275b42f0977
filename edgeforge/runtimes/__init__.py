"""Runtime adapters per artifact format, imported only when used."""

from __future__ import annotations

import importlib

from .base import RUNTIMES, Runtime, Session

_MODULES = {"onnx": ".onnxruntime", "tflite": ".litert", "coreml": ".coreml"}


def get_runtime(fmt: str) -> Runtime:
    if fmt not in RUNTIMES and fmt in _MODULES:
        importlib.import_module(_MODULES[fmt], __name__)
    return RUNTIMES.get(fmt)()


__all__ = ["RUNTIMES", "Runtime", "Session", "get_runtime"]
