"""The exporter interface: one small adapter per artifact format, holding that format's policy.

Everything a format decides lives in its exporter (and its runtime): which precisions it writes,
its options, which reference an artifact is judged against, its parity tolerance, the rules its
files must meet after export, and the packages whose versions the manifest records. Validation,
the gate and the pipeline ask these methods and never test ``target.format`` themselves.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import EdgeforgeError, ExportError
from ..records import Check
from ..registry import Registry
from ..targets import TargetProfile

if TYPE_CHECKING:
    from ..carrier import Carrier
    from ..config import ValidationConfig
    from ..schema import Strict

Reference = Literal["qat_simulation", "float_student"]

# fp16 logits differ from fp32 by a few ulps of fp16 (~1e-3 relative); int8 artifacts are judged by
# drift and agreement against the QAT simulation instead of an absolute tolerance.
FP16_PARITY_ATOL = 2e-2


@dataclass
class ExportedArtifact:
    path: Path
    format: str
    precision: str
    info: dict[str, Any] = field(default_factory=dict)  # ops, io dtypes, opset, converter versions


class Exporter(ABC):
    format: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    suffix: ClassVar[str]
    extra: ClassVar[str]
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions the manifest records
    options_model: ClassVar[type[Strict] | None] = None  # the profile's `<format>:` section

    def check_target(self, target: TargetProfile) -> None:
        """Plan-time checks of a profile against this format (precision, options); raises ExportError."""
        if target.precision not in self.precisions:
            raise ExportError(f"{self.format} precision '{target.precision}' is not supported "
                              f"(supported: {', '.join(self.precisions)})", target=target.name,
                              key="precision", fix="fix 'precision' in its profile")
        if self.options_model is not None:
            target.format_options(self.options_model)

    def reference(self, target: TargetProfile) -> Reference:
        """The model whose predictions an artifact of this target must reproduce."""
        return "qat_simulation" if target.precision == "int8" else "float_student"

    def parity_atol(self, target: TargetProfile, validation: ValidationConfig) -> float | None:
        """Max |logit diff| vs the reference, or None where the format is judged by drift and agreement."""
        return {"fp32": validation.parity_atol, "fp16": FP16_PARITY_ATOL}.get(target.precision)

    def artifact_checks(self, info: dict[str, Any], target: TargetProfile) -> list[Check]:
        """Rules a written artifact must meet, enforced at build time (whatever preflight said)."""
        return []

    @abstractmethod
    def export(self, carrier: Carrier, target: TargetProfile, path: Path) -> ExportedArtifact:
        """Write the artifact for ``target`` to ``path`` (the caller makes the write atomic)."""


def converter_failed(tool: str, exc: BaseException, carrier: Carrier, target: TargetProfile) -> ExportError:
    """A converter's exception as one ExportError naming the student's op behind it and a fix.

    A known failure (``known_errors``) is named by the op that causes it. Otherwise the op is found
    by looking for the student's own graph ops in the converter's message (a converter names the op
    it cannot lower), not by guessing at the message's wording.
    """
    from .known_errors import explain

    detail = f"{type(exc).__name__}: {first_line(exc)}"
    ops = student_ops(carrier)
    known = explain(target.format, str(exc), ops, target.name)
    if known is not None:
        return ExportError(f"the {target.format} converter cannot take op {known.op}: {known.why} "
                           f"({tool}: {detail[:120]})", target=target.name, op=known.op, fix=known.fix)
    op = next((o for o in ops if o in str(exc)), None)
    if op is not None:
        return ExportError(f"the {target.format} converter cannot take op {op} ({tool} failed: {detail})",
                           target=target.name, op=op, fix="replace that op in the student or drop the target")
    return ExportError(f"{tool} failed: {detail}", target=target.name)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The useful line of an exception's message (MLIR errors: the part after "error:")."""
    # edgeforge's own checks after conversion: the message without the target prefix
    text = exc.message if isinstance(exc, EdgeforgeError) else str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = next((ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln), lines[0] if lines else "")
    return (first or type(exc).__name__)[:limit]


def student_ops(carrier: Carrier) -> list[str]:
    """The aten ops of the carrier's graph (``aten.conv2d``), longest first so prefixes do not shadow."""
    gm = carrier.quantized
    if gm is None:
        return []
    ops = {str(n.target).rsplit(".", 1)[0] for n in gm.graph.nodes
           if n.op == "call_function" and str(n.target).startswith("aten.")}
    return sorted(ops, key=len, reverse=True)


EXPORTERS: Registry[type[Exporter]] = Registry("exporter format")


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
