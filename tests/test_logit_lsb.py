"""The logit gate in output LSBs: an artifact whose logits sit a few quantization steps off its reference fails
by default, an exact one passes, a float output says "not applicable", and old manifests still load and gate.

Logits here are int8 codes times the carrier's output step, as a W8A8 artifact and its QAT simulation
produce them; the carriers are two-op graphs built in code (no training).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeforge.gate import evaluate_gate
from edgeforge.gate_spec import DEFAULT_GATE
from edgeforge.metrics import METRICS
from edgeforge.records import Metrics
from edgeforge.validate import artifact_metrics, set_logit_lsb

STEP = 0.05  # the carrier's output scale: one LSB of the logits


def _reference(n: int = 200, classes: int = 10) -> np.ndarray:
    codes = np.random.default_rng(0).integers(-128, 128, size=(n, classes))
    return (codes * STEP).astype(np.float32)


def _metrics(logits: np.ndarray, reference: np.ndarray, step: float | None = STEP) -> Metrics:
    labels = reference.argmax(1)
    m = artifact_metrics(logits=logits, labels=labels, num_classes=reference.shape[1], metric=METRICS.get("top1"),
                         reference_values={"teacher": 1.0, "float_student": 1.0, "qat_simulation": 1.0},
                         reference_name="qat_simulation", reference_logits=reference, size_bytes=1000,
                         teacher_bytes=10_000)
    set_logit_lsb(m, logits, reference, step, "not applicable: a fp32 artifact's output is float (no quantization step)")
    return m


def _lsb_check(m: Metrics) -> Any:
    return next(c for c in evaluate_gate(m, DEFAULT_GATE, None) if c.name == "logit_lsb")


def test_exact_artifact_passes_and_a_planted_offset_fails_by_default() -> None:
    ref = _reference()
    exact = _metrics(ref.copy(), ref)
    assert (exact.logit_lsb_p99, exact.logit_lsb_max, exact.output_step) == (0.0, 0.0, STEP)
    assert _lsb_check(exact).passed
    planted = ref.copy()
    planted[:, 3] += 12 * STEP  # one class's logit 12 steps high on every input: top-1 mostly unchanged
    m = _metrics(planted, ref)
    assert m.logit_lsb_p99 == pytest.approx(12.0, rel=1e-4) and m.logit_lsb_max == pytest.approx(12.0, rel=1e-4)
    check = _lsb_check(m)
    assert not check.passed and check.limit == DEFAULT_GATE.max_logit_lsb == 8
    assert "p99 |logit diff| vs qat_simulation in output LSBs (1 LSB = 0.05; max 12)" in check.message
    assert "12 LSB > limit 8 LSB" in check.message


def test_one_rounding_outlier_does_not_fail_the_gate() -> None:
    """The gate bounds the 99th percentile: one input of 200 far off moves the max, not the verdict."""
    ref = _reference()
    logits = ref.copy()
    logits[:, 0] += STEP  # a one-step rounding flip everywhere
    logits[7, 2] += 40 * STEP
    m = _metrics(logits, ref)
    assert m.logit_lsb_p99 == pytest.approx(1.0, rel=1e-4) and m.logit_lsb_max == pytest.approx(40.0, rel=1e-4)
    assert _lsb_check(m).passed


def test_float_output_is_not_applicable_never_a_number() -> None:
    ref = _reference()
    m = _metrics(ref + 1.0, ref, step=None)
    assert m.logit_lsb_p99 is None and m.output_step is None
    check = _lsb_check(m)
    assert check.skipped and check.value is None
    assert check.message.startswith("not applicable: a fp32 artifact's output is float")


def test_old_manifest_without_the_metric_loads_gates_and_renders() -> None:
    from edgeforge.report import _target_row, logit_lsb_text
    from edgeforge.target_stages import metrics_from

    ref = _reference()
    record = asdict(_metrics(ref, ref))
    for key in ("logit_lsb_p99", "logit_lsb_max", "output_step", "logit_lsb_note"):
        record.pop(key)
    old = metrics_from({"metrics": record})
    check = _lsb_check(old)
    assert check.skipped and "predates the logit LSB metric" in check.message
    assert logit_lsb_text(record) == ""
    row = {"name": "t", "format": "onnx", "precision": "int8", "status": "ok", "checks": [], "metrics": record}
    assert "LSB" not in _target_row(row, "top1")
    new = asdict(_metrics(ref + 3 * STEP, ref))
    assert "(p99 3 / max 3 LSB)" in _target_row({**row, "metrics": new}, "top1")


class _Head(torch.nn.Module):
    """A linear head, its output int8 fake-quantized (quantize + dequantize) or left float."""

    def __init__(self, quantized: bool) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.quantized = quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if not self.quantized:
            return y
        ops = torch.ops.quantized_decomposed
        q = ops.quantize_per_tensor.default(y, STEP, 3, -128, 127, torch.int8)
        return ops.dequantize_per_tensor.default(q, STEP, 3, -128, 127, torch.int8)


def _graph(quantized: bool) -> torch.fx.GraphModule:
    import torchao.quantization.pt2e  # noqa: F401  registers the quantized_decomposed ops

    batch = {0: torch.export.Dim.AUTO}  # dynamic, as the pipeline's carriers are
    gm = torch.export.export(_Head(quantized), (torch.zeros(2, 4),), dynamic_shapes=(batch,)).module()
    assert isinstance(gm, torch.fx.GraphModule)
    return gm


def test_output_step_is_the_carriers_output_scale(tmp_path: Path) -> None:
    from edgeforge.debug.carrier_nodes import output_step
    from edgeforge.debug.in_build import output_step as target_step
    from edgeforge.quant.qat import save_carrier
    from edgeforge.targets import TargetProfile

    assert output_step(_graph(True)) == pytest.approx(STEP)
    assert output_step(_graph(False)) is None
    int8 = TargetProfile.model_validate({"name": "t8", "format": "onnx", "precision": "int8"})
    fp32 = TargetProfile.model_validate({"name": "t32", "format": "onnx", "precision": "fp32"})
    files = {}
    for quantized in (True, False):
        files[quantized] = tmp_path / f"carrier_{quantized}.pt2"
        save_carrier(_graph(quantized), torch.zeros(2, 4), str(files[quantized]))
    step, _ = target_step(int8, files[True])
    assert step == pytest.approx(STEP)
    assert target_step(int8, files[False]) == (None, "not applicable: the carrier's output is float (no output quantize op)")
    assert target_step(fp32, files[True])[0] is None


def test_layer_report_runs_in_the_build_when_logits_are_off_even_at_equal_accuracy(tmp_path: Path) -> None:
    """drift 0 and agreement 1 but logits 12 LSB off: the build asks the layer report (here: no carrier file)."""
    from types import SimpleNamespace

    from edgeforge.debug.in_build import over_gate, verdict_over_gate
    from edgeforge.targets import TargetProfile

    ref = _reference()
    exact, off = _metrics(ref.copy(), ref), _metrics(ref + 12 * STEP, ref)
    assert (off.drift_points, off.agreement) == (0.0, 1.0)
    assert not over_gate(DEFAULT_GATE, exact) and over_gate(DEFAULT_GATE, off)
    target = TargetProfile.model_validate({"name": "t8", "format": "onnx", "precision": "int8"})
    test = SimpleNamespace(head=lambda n: torch.zeros(n, 1, 8, 8))
    plan: Any = SimpleNamespace(gates={"t8": DEFAULT_GATE}, data=SimpleNamespace(test=test),
                                lc=SimpleNamespace(output_dir=tmp_path))
    assert verdict_over_gate(plan, target, tmp_path / "model.onnx", exact) is None
    verdict = verdict_over_gate(plan, target, tmp_path / "model.onnx", off)
    assert verdict is not None and verdict.metric.startswith("layer report failed: ")
