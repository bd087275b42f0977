"""The contract every format keeps, written once and subclassed per format.

One QAT carrier (tiny CNN on digits, shared session fixture) goes through each format's exporter
and runtime: fp32 reproduces the float student, int8 reproduces the QAT simulation prediction by
prediction, odd batch counts work through fixed-batch padding, outputs are float32 logits, the
format's own policy answers (reference, parity, artifact rules), and a precision the format does
not write is rejected before any work with one line naming the target and the key.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edgeforge.config import ValidationConfig
from edgeforge.errors import ExportError
from edgeforge.exporters import get_exporter
from edgeforge.runtimes import get_runtime
from edgeforge.targets import TargetProfile


class FormatContract:
    format: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    int8_min_agreement: ClassVar[float] = 0.99
    unsupported_precision: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(autouse=True)
    def _needs(self) -> None:
        for module in self.needs:
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{module} is not installed (pip install 'edgeforge[{self.format}]')")

    def profile(self, precision: str, **kw: Any) -> TargetProfile:
        return TargetProfile.model_validate({"name": f"{self.format}-{precision}", "format": self.format,
                                             "precision": precision, **self.options, **kw})

    def export_and_run(self, setup: dict[str, Any], target: TargetProfile, folder: Path) -> tuple[Any, np.ndarray]:
        exporter = get_exporter(self.format)
        art = exporter.export(setup["carrier"], target, folder / f"model{exporter.suffix}")
        runtime = get_runtime(self.format, target.runtime.engine)
        if runtime.unavailable_reason():
            pytest.skip(f"{self.format} cannot run here: {runtime.unavailable_reason()}")
        logits = runtime.open(art.path, target).run_all(setup["x"][:101], batch_size=32)  # odd count on purpose
        return art, logits

    def test_fp32_reproduces_the_float_student(self, digits_carrier: dict[str, Any], tmp_path: Path) -> None:
        target = self.profile("fp32")
        _, logits = self.export_and_run(digits_carrier, target, tmp_path)
        ref = digits_carrier["float"][:101]
        assert logits.dtype == np.float32 and logits.shape == ref.shape
        atol = get_exporter(self.format).parity_atol(target, ValidationConfig())
        assert atol is not None and float(np.abs(logits - ref).max()) <= atol

    def test_int8_reproduces_the_qat_simulation(self, digits_carrier: dict[str, Any], tmp_path: Path) -> None:
        target = self.profile("int8")
        exporter = get_exporter(self.format)
        assert exporter.reference(target) == "qat_simulation"
        art, logits = self.export_and_run(digits_carrier, target, tmp_path)
        ref, y = digits_carrier["qat"][:101], digits_carrier["y"][:101]
        agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
        drift = abs(float((logits.argmax(1) == y).mean()) - float((ref.argmax(1) == y).mean())) * 100
        assert agreement >= self.int8_min_agreement and drift <= 1.0, (agreement, drift)
        rules = exporter.artifact_checks(art.info, target)
        assert all(c.passed for c in rules), [c.message for c in rules]

    def test_unsupported_precision_is_one_line_naming_target_and_key(self) -> None:
        if self.unsupported_precision is None:
            pytest.skip(f"{self.format} writes every precision edgeforge knows")
        with pytest.raises(ExportError) as err:
            get_exporter(self.format).check_target(self.profile(self.unsupported_precision))
        msg = str(err.value)
        assert "\n" not in msg and err.value.target == f"{self.format}-{self.unsupported_precision}"
        assert err.value.key == "precision" and "supported:" in msg


@pytest.mark.onnx
class TestOnnx(FormatContract):
    format = "onnx"
    needs = ("onnx", "onnxruntime", "onnxscript")
    int8_min_agreement = 0.97  # onnxruntime's fused AVX2 int8 kernels may differ by an LSB (see README)


@pytest.mark.tflite
class TestTflite(FormatContract):
    format = "tflite"
    needs = ("litert_torch", "ai_edge_litert")


@pytest.mark.coreml
class TestCoreml(FormatContract):
    format = "coreml"
    needs = ("coremltools",)


@pytest.mark.executorch
class TestExecutorch(FormatContract):
    format = "executorch"
    needs = ("executorch",)
    unsupported_precision = "fp16"
