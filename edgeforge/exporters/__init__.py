"""Exporters per artifact format, registered by format name and imported only when used."""

from __future__ import annotations

import importlib

from .base import EXPORTERS, ExportedArtifact, Exporter

_MODULES = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".coreml"}


def get_exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS and fmt in _MODULES:
        importlib.import_module(_MODULES[fmt], __name__)
    return EXPORTERS.get(fmt)()


def known_formats() -> list[str]:
    return sorted(set(_MODULES) | set(EXPORTERS.names()))


__all__ = ["EXPORTERS", "ExportedArtifact", "Exporter", "get_exporter", "known_formats"]
