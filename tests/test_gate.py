"""The gate on its own: one schema for build and target, one merge rule, format policy for parity.

Nothing here imports torch: the gate, the config and the profiles are pure (checked by the last test).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from edgeforge.config import ValidationConfig
from edgeforge.errors import ConfigError
from edgeforge.gate import evaluate_gate
from edgeforge.gate_spec import DEFAULT_GATE, GateSpec
from edgeforge.records import Latency, Metrics
from edgeforge.targets import TargetProfile


def _t(**kw: Any) -> TargetProfile:
    return TargetProfile.model_validate({"name": "t", "format": "onnx", "precision": "fp32", **kw})


def _m(**kw: Any) -> Metrics:
    base: dict[str, Any] = dict(
        metric="top1", top1=0.98, per_class_top1=[0.98], retention=0.995, reference="float_student",
        reference_top1=0.978, drift_points=0.2, vs_float_student_points=0.2, agreement=0.999, max_abs_diff=5e-5,
        mean_abs_diff=1e-5, size_bytes=40_000, compression_vs_teacher=10.0,
        latency=Latency(1, 1, 10, 100, 1.0, 1.0, 2.0, 3.0, 1.2, "host"))
    return Metrics(**{**base, **kw})


def _by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


def test_defaults_pass_and_fail_at_the_limits() -> None:
    c = _by_name(evaluate_gate(_m(), DEFAULT_GATE, 1e-4))
    assert c["retention"].passed and c["drift"].passed and c["parity"].passed and c["agreement"].passed
    c = _by_name(evaluate_gate(_m(retention=0.98, drift_points=-0.6, max_abs_diff=2e-4, agreement=0.985),
                               DEFAULT_GATE, 1e-4))
    assert not c["retention"].passed and "0.9800 < minimum 0.9900" in c["retention"].message
    assert not c["drift"].passed and not c["parity"].passed
    assert not c["agreement"].passed, "equal accuracy with different predictions must not pass by default"


def test_one_merge_rule_target_overrides_build_field_by_field() -> None:
    build = GateSpec(max_size_kb=100, min_retention=0.995).over(DEFAULT_GATE)
    target = _t(gate={"min_retention": 0.97, "max_drift_points": 1.5, "max_latency_p90_ms": 1.5})
    eff = target.gate.over(build)
    assert (eff.min_retention, eff.max_drift_points, eff.max_size_kb, eff.min_agreement) == (0.97, 1.5, 100, 0.99)
    c = _by_name(evaluate_gate(_m(retention=0.975, drift_points=-1.2, size_bytes=200_000), eff, None))
    assert c["retention"].passed and c["drift"].passed
    assert not c["size"].passed and "KiB" in c["size"].message
    assert not c["latency_p90"].passed and "(host)" in c["latency_p90"].message


def test_old_budgets_key_names_the_new_one() -> None:
    with pytest.raises(Exception, match="'budgets' is now 'gate'"):
        _t(budgets={"size_kb": 3})


def test_parity_tolerance_is_the_formats_policy() -> None:
    from edgeforge.exporters import get_exporter

    v = ValidationConfig()
    onnx = get_exporter("onnx")
    assert onnx.parity_atol(_t(), v) == v.parity_atol
    assert onnx.parity_atol(_t(precision="fp16"), v) == 2e-2
    assert onnx.parity_atol(_t(precision="int8"), v) is None  # int8: judged by drift and agreement
    assert onnx.reference(_t(precision="int8")) == "qat_simulation"
    palette = _t(format="coreml", precision="fp16", coreml={"weights": "palette4"})
    assert get_exporter("coreml").parity_atol(palette, v) is None


def test_unmeasured_latency_is_not_checked_never_passed_silently() -> None:
    c = _by_name(evaluate_gate(_m(latency=None, latency_note="needs macOS"), GateSpec(max_latency_p90_ms=5), None))
    assert c["latency_p90"].skipped and "not checked: needs macOS" in c["latency_p90"].message


def test_adb_p95_bounds_p90() -> None:
    lat = Latency(1, 1, 1, 50, None, 1.0, None, None, None, "adb:X", extra={"p95_ms": 4.0})
    c = _by_name(evaluate_gate(_m(latency=lat), GateSpec(max_latency_p90_ms=3), None))
    assert not c["latency_p90"].passed and "p95 latency, which bounds p90" in c["latency_p90"].message


def test_unknown_format_and_bad_format_options_name_what_exists() -> None:
    with pytest.raises(Exception, match="unknown format 'tensorrt'.*available: .*onnx"):
        _t(format="tensorrt")
    from edgeforge.schema import parse

    with pytest.raises(ConfigError, match=r"p.yaml: onnxx: unknown key \(allowed: .*gate"):
        parse(TargetProfile, {"name": "t", "format": "onnx", "precision": "fp32", "onnxx": {"opset": 3}}, "p.yaml")


def test_format_options_are_parsed_by_the_formats_own_model() -> None:
    from edgeforge.schema import Strict

    class Opts(Strict):
        level: int = 1

    t = _t(format="tflite", tflite={"output_dtype": "float32"})
    assert t.format_options(Opts).level == 1
    known = "tflite"
    bad = TargetProfile.model_validate({"name": "b", "format": known, "precision": "fp32"})
    assert bad.format_options(Opts).level == 1
    with pytest.raises(ConfigError, match="target b"):
        object.__setattr__(bad, "format_sections", {known: {"levle": 2}})
        bad._options.clear()
        bad.format_options(Opts)


def test_gate_config_and_profiles_import_without_torch() -> None:
    code = ("import sys; import edgeforge.gate, edgeforge.config, edgeforge.targets, edgeforge.records, "
            "edgeforge.exporters; edgeforge.targets.available(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
