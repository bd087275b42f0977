"""Preflight before training, and the per-device build matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeforge.cli import main
from edgeforge.pipeline import build

pytestmark = pytest.mark.slow

DET_STUDENT = """
import torch
from edgeforge.models.students import ConvNet


class DetNet(ConvNet):
    '''A student with an op LiteRT has no lowering for (a determinant of a feature patch).'''

    def forward(self, x):
        f = self.features(self.stem(x))
        scale = torch.linalg.det(f[:, :1, :2, :2]).reshape(-1, 1)
        return self.classifier(f.mean((2, 3))) * (1 + 0.0 * scale)


def student():
    return DetNet(1, 4, width=8, depth=1)
"""


def test_unsupported_op_fails_preflight_fast_before_training(make_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("litert_torch")
    (tmp_path / "detnet.py").write_text(DET_STUDENT)
    cfg = make_config(**{"student.family": None, "student.factory": "detnet:student",
                         "targets": ["onnx-cpu-int8", "tflite-cpu-int8"]})
    code = main(["build", str(cfg)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("edgeforge: error:")]
    assert code == 1 and len(lines) == 1, err[-2000:]
    line = lines[0]
    assert "preflight failed for 1 target(s)" in line
    assert "target tflite-cpu-int8: the tflite converter cannot take op aten." in line and "linalg_det" in line
    assert line.count("replace that op in the student or drop the target") == 1
    assert not list((tmp_path / "out" / "cache").glob("distill-*")), "no training may start after a failed preflight"
    # the ONNX target alone passes preflight (ONNX has Det), through the preflight command
    assert main(["preflight", str(cfg), "--target", "onnx-cpu-int8"]) == 0


def test_dynamic_batch_where_the_target_needs_static(make_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("coremltools")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "ne-dynamic.yaml").write_text(
        "name: ne-dynamic\nformat: coreml\nprecision: fp16\ninput: {batch: dynamic}\n")
    cfg = make_config(targets=["ne-dynamic"], target_dirs=[str(profiles)])
    assert main(["preflight", str(cfg)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    # the profile is checked against its format in the plan, before preflight exports anything
    assert line.startswith("edgeforge: error: target ne-dynamic: Core ML targets need a static batch"), line
    assert "set input.batch: 1" in line


def test_all_targets_matrix(make_config, tiny_assets: Path) -> None:  # type: ignore[no-untyped-def]
    """Every profile in targets/ built from one distill + QAT: validated, or honestly unvalidated."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("coremltools")
    cfg = make_config(**{"gate.min_retention": 0.5, "gate.max_drift_points": 10.0})
    result = build(cfg, all_targets=True, log=lambda _m: None)
    m = result.manifest
    from edgeforge.targets import available

    assert [t["name"] for t in m["targets"]] == list(available())
    assert len(m["targets"]) >= 8
    for t in m["targets"]:
        assert t["status"] in ("validated", "unvalidated"), (t["name"], t.get("reason"))
        if t["status"] == "validated":
            assert (result.manifest_path.parent / t["artifact"]["path"]).exists()
            lat = t["metrics"]["latency"]
            assert lat is None and t["format"] == "coreml" or lat["measured_on"] == "host"
    assert m["stages"]["distill"]["cached"] is False  # one distill for the whole matrix
    assert len(list((result.manifest_path.parent / "cache").glob("distill-*"))) == 1
    report = (result.manifest_path.parent / "report.md").read_text()
    assert all(f"| {t['name']} |" in report for t in m["targets"])
    assert json.loads(result.manifest_path.read_text())["exit_code"] == result.exit_code
