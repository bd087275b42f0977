"""The layer report as a build runs it: for an int8 target over its drift gate, recorded, never raised."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..records import FirstDivergent, Metrics

if TYPE_CHECKING:
    from ..gate_spec import GateSpec
    from ..plan import Plan
    from ..targets import TargetProfile

SAMPLES = 32  # test inputs the build's report compares on (the first of the test split)


def verdict_over_gate(plan: Plan, target: TargetProfile, artifact: Path, metrics: Metrics) -> FirstDivergent | None:
    """For an int8 target over its drift, agreement or logit-LSB gate, the layer report's verdict; else None."""
    if target.precision != "int8" or not over_gate(plan.gates[target.name], metrics):
        return None
    x = plan.data.test.head(SAMPLES)
    if not isinstance(x, torch.Tensor):
        return FirstDivergent(None, None, None, "layer report not run: it compares models with one float input")
    return first_divergent(plan.lc.output_dir / "student_qat.pt2", artifact, target, x.numpy())


def over_gate(gate: GateSpec, m: Metrics) -> bool:
    """Whether the numbers disagree with the reference beyond the gate (equal accuracy can hide it: agreement
    and logit LSBs count too)."""
    drift = gate.max_drift_points is not None and abs(m.drift_points) > gate.max_drift_points
    agreement = gate.min_agreement is not None and m.agreement < gate.min_agreement
    lsb = gate.max_logit_lsb is not None and m.logit_lsb_p99 is not None and m.logit_lsb_p99 > gate.max_logit_lsb
    return drift or agreement or lsb


def first_divergent(carrier_file: Path, artifact: Path, target: TargetProfile, x: np.ndarray) -> FirstDivergent:
    """The first divergent node of ``artifact`` (None when none diverges); a failure is its one-line reason."""
    from ..quant.qat import load_carrier
    from .report import NotProbed, layer_report

    try:
        report = layer_report(load_carrier(str(carrier_file)), artifact, target, x)
    except NotProbed as exc:  # a format without a probe says so, never "failed"
        return FirstDivergent(None, None, None, str(exc).split(": ", 1)[-1])
    except Exception as exc:  # the report is a diagnosis: whatever breaks it, the build goes on
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return FirstDivergent(None, None, None, f"layer report failed: {reason}")
    row = report.first_divergent
    if row is None:
        return FirstDivergent(None, None, None, report.verdict())
    return FirstDivergent(row.node, row.module, row.op, row.metric_text())


def output_step(target: TargetProfile, carrier_file: Path) -> tuple[float | None, str]:
    """The LSB of the logits an int8 target is judged in (the carrier's output scale), or why there is none."""
    if target.precision != "int8":
        return None, f"not applicable: a {target.precision} artifact's output is float (no quantization step)"
    if not carrier_file.is_file():
        return None, f"not measured: the carrier {carrier_file.name} is missing"
    return _carrier_step(str(carrier_file), carrier_file.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _carrier_step(path: str, _mtime_ns: int) -> tuple[float | None, str]:
    """Read once per carrier file (every int8 target of a build asks); the mtime keys a rewritten file anew."""
    from ..quant.qat import load_carrier
    from .carrier_nodes import output_step as step_of

    step = step_of(load_carrier(path))
    return step, "" if step is not None else "not applicable: the carrier's output is float (no output quantize op)"
