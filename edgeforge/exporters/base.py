"""The exporter interface: one small adapter per artifact format."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..carrier import Carrier
from ..errors import ExportError
from ..registry import Registry
from ..targets import TargetProfile


@dataclass
class ExportedArtifact:
    path: Path
    format: str
    precision: str
    info: dict[str, Any] = field(default_factory=dict)  # ops, io dtypes, opset, converter versions


class Exporter(ABC):
    format: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    suffix: ClassVar[str]
    extra: ClassVar[str]

    def check_precision(self, target: TargetProfile) -> None:
        if target.precision not in self.precisions:
            raise ExportError(
                f"target {target.name}: {self.format} precision '{target.precision}' is not supported "
                f"(supported: {', '.join(self.precisions)}); fix 'precision' in its profile"
            )

    @abstractmethod
    def export(self, carrier: Carrier, target: TargetProfile, path: Path) -> ExportedArtifact:
        """Write the artifact for ``target`` to ``path`` (the caller makes the write atomic)."""


EXPORTERS: Registry[type[Exporter]] = Registry("exporter format")


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
