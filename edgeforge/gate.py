"""The release gate: named checks per target, each with its value, limit and verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .config import GateConfig, ValidationConfig
from .targets import TargetProfile

# fp16 logits differ from fp32 by a few ulps of fp16 (~1e-3 relative); int8 parity is judged by
# top-1 drift and agreement instead of an absolute tolerance.
PARITY_ATOL = {"fp32": None, "fp16": 2e-2}


@dataclass
class Check:
    name: str
    passed: bool
    value: float | str | None
    limit: float | str | None
    message: str
    skipped: bool = False  # could not be measured here; shown as "not checked", never as a pass

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _le(name: str, value: float, limit: float, what: str, unit: str = "") -> Check:
    ok = value <= limit
    return Check(name, ok, value, limit, f"{what} {value:.4g}{unit} {'<=' if ok else '>'} limit {limit:.4g}{unit}")


def _ge(name: str, value: float, limit: float, what: str) -> Check:
    ok = value >= limit
    return Check(name, ok, value, limit, f"{what} {value:.4f} {'>=' if ok else '<'} minimum {limit:.4f}")


def evaluate_gate(target: TargetProfile, metrics: dict[str, Any], gate: GateConfig,
                  validation: ValidationConfig) -> list[Check]:
    checks: list[Check] = []
    min_ret = target.budgets.min_retention or gate.min_retention
    checks.append(_ge("retention", metrics["retention"], min_ret, "top-1 retention vs teacher"))
    drift = abs(metrics["drift_points"])
    max_drift = target.budgets.max_drift_points if target.budgets.max_drift_points is not None else gate.max_drift_points
    checks.append(_le("drift", drift, max_drift, f"|top-1 drift| vs {metrics['reference']}", " pt"))
    if gate.min_agreement is not None:
        checks.append(_ge("agreement", metrics["agreement"], gate.min_agreement, f"top-1 agreement with {metrics['reference']}"))
    atol = validation.parity_atol if target.precision == "fp32" else PARITY_ATOL.get(target.precision)
    if target.format == "coreml" and target.coreml.weights != "float":
        atol = None  # compressed weights change the logits by design: judged by drift and agreement
    if atol is not None:
        checks.append(_le("parity", metrics["max_abs_diff"], atol, f"max |logit diff| vs {metrics['reference']}"))
    lat_budget = target.budgets.latency_p90_ms or gate.max_latency_p90_ms
    lat = metrics.get("latency")
    if lat_budget is not None:
        if lat is None:
            note = metrics.get("latency_note") or "latency was not measured"
            checks.append(Check("latency_p90", True, None, lat_budget, f"not checked: {note}", skipped=True))
        elif lat.get("p90_ms") is None and (lat.get("extra") or {}).get("p95_ms") is not None:
            # adb's benchmark_model prints p95, not p90: p95 >= p90, so passing on it is a safe bound
            checks.append(_le("latency_p90", lat["extra"]["p95_ms"], lat_budget,
                              f"p95 latency, which bounds p90 ({lat['measured_on']})", " ms"))
        elif lat.get("p90_ms") is None:
            checks.append(Check("latency_p90", True, None, lat_budget,
                                f"not checked: {lat['measured_on']} reports no p90", skipped=True))
        else:
            checks.append(_le("latency_p90", lat["p90_ms"], lat_budget, f"p90 latency ({lat['measured_on']})", " ms"))
    size_budget = target.budgets.size_kb or gate.max_size_kb
    if size_budget is not None:
        checks.append(_le("size", metrics["size_bytes"] / 1024, size_budget, "artifact size", " KiB"))
    return checks
