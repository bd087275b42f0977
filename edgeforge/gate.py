"""The release gate: named checks per target, each with its value, limit and verdict.

Written once over a target's effective gate (``GateSpec``, resolved in the plan) and the metrics
its runtime produced; the only format knowledge it needs — the parity tolerance — comes from the
format's exporter.
"""

from __future__ import annotations

from .gate_spec import GateSpec
from .metrics import label
from .records import Check, Latency, Metrics


def _le(name: str, value: float, limit: float, what: str, unit: str = "") -> Check:
    ok = value <= limit
    return Check(name, ok, value, limit, f"{what} {value:.4g}{unit} {'<=' if ok else '>'} limit {limit:.4g}{unit}")


def _ge(name: str, value: float, limit: float, what: str) -> Check:
    ok = value >= limit
    return Check(name, ok, value, limit, f"{what} {value:.4f} {'>=' if ok else '<'} minimum {limit:.4f}")


def latency_check(lat: Latency | None, budget: float, note: str | None) -> Check:
    if lat is None:
        return Check("latency_p90", True, None, budget, f"not checked: {note or 'latency was not measured'}", skipped=True)
    if lat.p90_ms is None and lat.extra.get("p95_ms") is not None:
        # adb's benchmark_model prints p95, not p90: p95 >= p90, so passing on it is a safe bound
        return _le("latency_p90", lat.extra["p95_ms"], budget, f"p95 latency, which bounds p90 ({lat.measured_on})", " ms")
    if lat.p90_ms is None:
        return Check("latency_p90", True, None, budget, f"not checked: {lat.measured_on} reports no p90", skipped=True)
    return _le("latency_p90", lat.p90_ms, budget, f"p90 latency ({lat.measured_on})", " ms")


def logit_lsb_check(m: Metrics, limit: float) -> Check:
    if m.logit_lsb_p99 is None or m.output_step is None:
        why = m.logit_lsb_note or "not measured (this record predates the logit LSB metric)"
        return Check("logit_lsb", True, None, limit, why, skipped=True)
    return _le("logit_lsb", m.logit_lsb_p99, limit, f"p99 |logit diff| vs {m.reference} in output LSBs "
               f"(1 LSB = {m.output_step:.4g}; max {m.logit_lsb_max:.4g})", " LSB")


def evaluate_gate(metrics: Metrics, gate: GateSpec, parity_atol: float | None) -> list[Check]:
    """Checks of one validated artifact against its effective gate."""
    checks: list[Check] = []
    ref, metric = metrics.reference, label(metrics.metric)
    if gate.min_retention is not None:
        retention = metrics.retention if metrics.retention is not None else float("nan")
        checks.append(_ge("retention", retention, gate.min_retention, f"{metric} retention vs teacher"))
    if gate.max_drift_points is not None:
        checks.append(_le("drift", abs(metrics.drift_points), gate.max_drift_points,
                          f"|{metric} drift| vs {ref}", " pt"))
    if gate.min_agreement is not None:
        checks.append(_ge("agreement", metrics.agreement, gate.min_agreement, f"top-1 agreement with {ref}"))
    if gate.max_logit_lsb is not None:
        checks.append(logit_lsb_check(metrics, gate.max_logit_lsb))
    if parity_atol is not None:
        checks.append(_le("parity", metrics.max_abs_diff, parity_atol, f"max |logit diff| vs {ref}"))
    if gate.max_latency_p90_ms is not None:
        checks.append(latency_check(metrics.latency, gate.max_latency_p90_ms, metrics.latency_note))
    if gate.max_size_kb is not None:
        checks.append(_le("size", metrics.size_bytes / 1024, gate.max_size_kb, "artifact size", " KiB"))
    return checks
