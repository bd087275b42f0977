"""The digits sample on real data (scikit-learn's bundled digits), as the README runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_digits_sample_meets_the_release_gate(tmp_path: Path) -> None:
    env = {**os.environ, "CI": "1"}
    subprocess.run([sys.executable, str(ROOT / "samples" / "digits" / "prepare.py")], check=True, env=env,
                   capture_output=True, timeout=600)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeforge", "build", str(ROOT / "samples" / "digits" / "edgeforge.yaml"),
         "--set", f"output={tmp_path / 'digits'}", "--target", "onnx-cpu-fp32", "--target", "onnx-cpu-int8"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "digits" / "manifest.json").read_text())
    teacher, student = m["models"]["teacher"], m["models"]["float_student"]
    assert teacher["parameters"] >= 10 * student["parameters"]
    int8 = next(t for t in m["targets"] if t["name"] == "onnx-cpu-int8")
    assert int8["status"] == "validated" and int8["executor"].startswith("onnxruntime")
    assert int8["metrics"]["retention"] >= 0.99
    assert int8["metrics"]["compression_vs_teacher"] >= 30
    assert abs(int8["metrics"]["drift_vs_qat_points"]) <= 0.5
    assert int8["runtime_graph"]["ops_after_fusion"].get("QLinearConv", 0) >= 3
