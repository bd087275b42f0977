"""The gate's checks on their own: limits, per-target budgets, what is skipped and why."""

from __future__ import annotations

from typing import Any

from edgeforge.config import GateConfig, ValidationConfig
from edgeforge.gate import evaluate_gate
from edgeforge.targets import TargetProfile


def _t(**kw: Any) -> TargetProfile:
    return TargetProfile.model_validate({"name": "t", "format": "onnx", "precision": "fp32", **kw})


def _m(**kw: Any) -> dict[str, Any]:
    base = {"retention": 0.995, "drift_points": 0.2, "reference": "float_student", "agreement": 0.999,
            "max_abs_diff": 5e-5, "size_bytes": 40_000,
            "latency": {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "measured_on": "host"}}
    return {**base, **kw}


def _by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


def test_defaults_pass_and_fail_at_the_limits() -> None:
    c = _by_name(evaluate_gate(_t(), _m(), GateConfig(), ValidationConfig()))
    assert c["retention"].passed and c["drift"].passed and c["parity"].passed
    c = _by_name(evaluate_gate(_t(), _m(retention=0.98, drift_points=-0.6, max_abs_diff=2e-4), GateConfig(),
                               ValidationConfig()))
    assert not c["retention"].passed and "0.9800 < minimum 0.9900" in c["retention"].message
    assert not c["drift"].passed and not c["parity"].passed


def test_target_budgets_override_the_config() -> None:
    t = _t(budgets={"min_retention": 0.97, "max_drift_points": 1.5, "size_kb": 30, "latency_p90_ms": 1.5})
    c = _by_name(evaluate_gate(t, _m(retention=0.975, drift_points=-1.2), GateConfig(), ValidationConfig()))
    assert c["retention"].passed and c["drift"].passed
    assert not c["size"].passed and "KiB" in c["size"].message
    assert not c["latency_p90"].passed and "(host)" in c["latency_p90"].message


def test_parity_tolerance_by_precision() -> None:
    fp16 = _by_name(evaluate_gate(_t(precision="fp16"), _m(max_abs_diff=0.01), GateConfig(), ValidationConfig()))
    assert fp16["parity"].passed and fp16["parity"].limit == 2e-2
    int8 = _by_name(evaluate_gate(_t(precision="int8"), _m(max_abs_diff=0.3, reference="qat_simulation"),
                                  GateConfig(), ValidationConfig()))
    assert "parity" not in int8  # int8 is judged by drift and agreement
    palette = _t(format="coreml", precision="fp16", coreml={"weights": "palette4"})
    assert "parity" not in _by_name(evaluate_gate(palette, _m(max_abs_diff=0.6), GateConfig(), ValidationConfig()))


def test_unmeasured_latency_is_not_checked_never_passed_silently() -> None:
    c = _by_name(evaluate_gate(_t(budgets={"latency_p90_ms": 5}), _m(latency=None, latency_note="needs macOS"),
                               GateConfig(), ValidationConfig()))
    assert c["latency_p90"].skipped and "not checked: needs macOS" in c["latency_p90"].message


def test_adb_p95_bounds_p90() -> None:
    lat = {"p50_ms": 1.0, "p90_ms": None, "p99_ms": None, "measured_on": "adb:X", "extra": {"p95_ms": 4.0}}
    c = _by_name(evaluate_gate(_t(budgets={"latency_p90_ms": 3}), _m(latency=lat), GateConfig(), ValidationConfig()))
    assert not c["latency_p90"].passed and "p95 latency, which bounds p90" in c["latency_p90"].message


def test_agreement_check_when_configured() -> None:
    c = _by_name(evaluate_gate(_t(), _m(agreement=0.97), GateConfig(min_agreement=0.99), ValidationConfig()))
    assert not c["agreement"].passed
