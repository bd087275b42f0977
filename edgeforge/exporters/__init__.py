"""Exporters per artifact format. A module here named after its format registers its exporter.

Adding a format is adding a module (``exporters/<format>.py``) and its runtime
(``runtimes/<name>.py``): formats are discovered from the module names without importing them,
so listing or validating profiles never imports torch or a converter.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError
from .base import EXPORTERS, ExportedArtifact, Exporter

_NOT_FORMATS = {"base", "known_errors", "onnx_qdq", "tflite_ops"}  # helpers, not formats


def known_formats() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_FORMATS}
    return sorted(found | set(EXPORTERS.names()))


def exporter_class(fmt: str) -> type[Exporter]:
    if fmt not in EXPORTERS:
        if fmt not in known_formats():
            raise ConfigError(f"unknown format '{fmt}'; available: {', '.join(known_formats())}")
        importlib.import_module(f".{fmt}", __name__)
    return EXPORTERS.get(fmt)


def get_exporter(fmt: str) -> Exporter:
    return exporter_class(fmt)()


__all__ = ["EXPORTERS", "ExportedArtifact", "Exporter", "exporter_class", "get_exporter", "known_formats"]
