"""One gate schema: the limits an artifact must meet, shared by the build config and target profiles.

A build's ``gate:`` sets defaults for every target; a profile's ``gate:`` uses the same names and
overrides field by field for that target. ``resolve`` is the single merge rule; the plan resolves
each target's effective gate once and the manifest records it.
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat

from .schema import Strict


class GateSpec(Strict):
    min_retention: float | None = Field(None, gt=0, description="artifact metric / teacher metric")
    max_drift_points: float | None = Field(
        None, ge=0, description="|artifact metric - its reference's metric| in points (reference: the QAT "
        "simulation for int8, the float student for float artifacts)")
    min_agreement: float | None = Field(None, ge=0, le=1, description="share of top-1 predictions equal to the reference's")
    max_logit_lsb: PositiveFloat | None = Field(
        None, description="99th percentile over test inputs of the largest |artifact logit - reference logit| of an "
        "input, in quantization steps (LSBs) of the carrier's int8 output; not applicable to a float output")
    max_latency_p90_ms: PositiveFloat | None = None
    max_size_kb: PositiveFloat | None = None

    def over(self, base: GateSpec) -> GateSpec:
        """This gate's limits where set, ``base``'s elsewhere (the one merge rule)."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


# max_logit_lsb 8: artifacts that reproduce the QAT simulation sat at p99 1 LSB (ONNX, TFLite, ExecuTorch on the
# tiny and digits builds) up to 4-5 LSB (Fashion-MNIST; Core ML's fp16 between ops), while onnxruntime's saturating
# AVX2 int8 kernels gave 12 LSB (tiny build, agreement still 100%) and 54 LSB (digits, agreement 99.26%).
DEFAULT_GATE = GateSpec(min_retention=0.99, max_drift_points=0.5, min_agreement=0.99, max_logit_lsb=8)
