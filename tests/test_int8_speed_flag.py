"""An int8 artifact slower than its fp32 partner on the build host is flagged in the manifest and reports.

Records are built in code with fixed latencies: no model, no timing.
"""

from __future__ import annotations

from typing import Any

from edgeforge.html_report import render_html
from edgeforge.int8_speed import int8_slowdowns
from edgeforge.records import Latency, Manifest, Metrics, ModelRecord, TargetResult, manifest_json_schema
from edgeforge.report import render_report


def _latency(p50: float, measured_on: str = "host") -> Latency:
    return Latency(1, 1, 10, 100, 5.0, p50, p50 * 1.1, p50 * 1.2, p50, measured_on, [p50] * 3)


def _target(name: str, fmt: str, precision: str, p50: float | None, *, threads: int = 1,
            device_p50: float | None = None) -> TargetResult:
    metrics = Metrics("top1", 0.9, [0.9, 0.9], 0.99, "float student", 0.9, 0.0, 0.0, 1.0, 0.0, 0.0, 1000, 10.0)
    if device_p50 is not None:  # timed on a device: the host figure is kept apart
        metrics.latency, metrics.host_latency = _latency(device_p50, "adb:SERIAL"), _latency(p50 or 0.0)
    elif p50 is not None:
        metrics.latency = _latency(p50)
    return TargetResult(name, fmt, precision, "", {"kind": "cpu"}, threads, {}, "validated", metrics=metrics)


def _manifest(targets: list[TargetResult]) -> dict[str, Any]:
    model = ModelRecord(0.9, [0.9, 0.9], parameters=1000, bytes=4000)
    stage = {"best_epoch": 1, "best_val_top1": 0.9, "seconds": 1.0, "samples_per_second": 100.0, "cached": False}
    from edgeforge.records import GateOutcome

    m = Manifest(schema="edgeforge.manifest/2", name="speed", created="2026-11-28T00:00:00+00:00",
                 host={"platform": "Linux", "cpus": 2}, versions={}, config={"sha256": "c"},
                 data={"sha256": "d", "class_names": ["a", "b"]}, seed={"distill": 0, "qat": 0},
                 stage_seconds={}, stages={"distill": stage, "qat": stage},
                 models={"teacher": model, "float_student": model, "qat_simulation": model}, targets=targets,
                 gate=GateOutcome(True), exit_code=0)
    m.int8_slower = int8_slowdowns(targets)
    return m.to_json_dict()


def test_slower_int8_is_flagged_against_the_fastest_fp32_of_its_format() -> None:
    targets = [_target("onnx-cpu-fp32", "onnx", "fp32", 0.5), _target("onnx-cpu-fp32-b", "onnx", "fp32", 0.4),
               _target("onnx-cpu-int8", "onnx", "int8", 0.56),
               _target("tflite-cpu-fp32", "tflite", "fp32", 1.0), _target("tflite-cpu-int8", "tflite", "int8", 0.7)]
    (slow,) = int8_slowdowns(targets)
    assert (slow.format, slow.int8_target, slow.fp32_target) == ("onnx", "onnx-cpu-int8", "onnx-cpu-fp32-b")
    assert abs(slow.ratio - 1.4) < 1e-9
    assert slow.message == ("onnx-cpu-int8: int8 0.560 ms is 1.40x slower than fp32 0.400 ms (onnx-cpu-fp32-b) "
                            "on this host (format onnx)")


def test_no_partner_no_flag() -> None:
    """Another format, another thread count, an unmeasured or failed fp32 target: nothing to compare."""
    failed = _target("onnx-cpu-fp32-broken", "onnx", "fp32", 0.1)
    failed.status = "failed"
    targets = [_target("onnx-cpu-int8", "onnx", "int8", 2.0), _target("tflite-cpu-fp32", "tflite", "fp32", 0.1),
               _target("onnx-cpu-fp32-2t", "onnx", "fp32", 0.1, threads=2),
               _target("onnx-cpu-fp32-mac", "onnx", "fp32", None), failed]
    assert int8_slowdowns(targets) == []


def test_host_latency_is_compared_when_a_device_was_timed() -> None:
    targets = [_target("tflite-fp32", "tflite", "fp32", 1.0, device_p50=9.0),
               _target("tflite-int8", "tflite", "int8", 1.5, device_p50=4.0)]
    (slow,) = int8_slowdowns(targets)
    assert (slow.int8_ms, slow.fp32_ms) == (1.5, 1.0)


def test_manifest_and_both_reports_carry_the_warning() -> None:
    m = _manifest([_target("onnx-cpu-fp32", "onnx", "fp32", 0.125), _target("onnx-cpu-int8", "onnx", "int8", 0.39)])
    (flag,) = m["int8_slower"]
    line = "onnx-cpu-int8: int8 0.390 ms is 3.12x slower than fp32 0.125 ms (onnx-cpu-fp32) on this host (format onnx)"
    assert flag["message"] == line and flag["ratio"] > 3
    assert line in render_report(m)
    assert line in render_html(m)
    assert "int8_slower" in manifest_json_schema()["properties"]


def test_faster_int8_leaves_the_reports_quiet() -> None:
    m = _manifest([_target("onnx-cpu-fp32", "onnx", "fp32", 0.5), _target("onnx-cpu-int8", "onnx", "int8", 0.3)])
    assert m["int8_slower"] == []
    assert "slower than fp32" not in render_report(m) and "slower than fp32" not in render_html(m)
