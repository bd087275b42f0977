"""End-to-end builds of a tiny config: artifacts, manifest, gate exit codes, stage cache, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeforge.pipeline import build

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}


@pytest.fixture
def built(tiny_build):  # type: ignore[no-untyped-def]
    return tiny_build


def test_build_passes_and_writes_everything(built) -> None:  # type: ignore[no-untyped-def]
    _, result = built
    assert result.exit_code == 0, result.failures
    out = result.manifest_path.parent
    m = json.loads(result.manifest_path.read_text())
    assert m["schema"] == "edgeforge.manifest/2"
    assert (out / "student_float.pt").is_file() and (out / "student_qat.pt2").is_file()
    assert (out / "report.md").read_text().startswith("# edgeforge build: tiny")
    names = [t["name"] for t in m["targets"]]
    assert names == ["onnx-cpu-fp32", "onnx-cpu-int8"]
    for t in m["targets"]:
        assert t["status"] == "validated" and t["executor"].startswith("onnxruntime")
        art = out / t["artifact"]["path"]
        assert art.is_file() and art.stat().st_size == t["artifact"]["size_bytes"]
        from edgeforge.validate import sha256_file

        assert sha256_file(art) == t["artifact"]["sha256"]
        lat = t["metrics"]["latency"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["measured_on"] == "host"
    fp32, int8 = m["targets"]
    assert fp32["metrics"]["max_abs_diff"] <= 1e-4 and fp32["metrics"]["reference"] == "float_student"
    assert int8["metrics"]["reference"] == "qat_simulation"
    assert int8["metrics"]["agreement"] >= 0.98
    assert int8["metrics"]["size_bytes"] < fp32["metrics"]["size_bytes"]
    assert m["models"]["teacher"]["parameters"] > m["models"]["float_student"]["parameters"]
    for key in ("torch", "torchao", "onnxruntime", "numpy"):
        assert key in m["versions"]
    assert m["stages"]["distill"]["cached"] is False


def test_second_build_reuses_cached_stages(built) -> None:  # type: ignore[no-untyped-def]
    cfg, first = built
    again = build(cfg, log=lambda _m: None)
    m1 = first.manifest
    m2 = json.loads(again.manifest_path.read_text())
    assert m2["stages"]["distill"]["cached"] and m2["stages"]["qat"]["cached"]
    assert [t["artifact"]["sha256"] for t in m2["targets"]] == [t["artifact"]["sha256"] for t in m1["targets"]]


def test_impossible_gate_exits_2_naming_the_check(built) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = built
    proc = subprocess.run(
        [sys.executable, "-m", "edgeforge", "build", str(cfg), "--set", "gate.min_retention=1.5",
         "--target", "onnx-cpu-int8"],
        capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "onnx-cpu-int8: retention: top-1 retention vs teacher" in proc.stderr
    assert "Traceback" not in proc.stderr
    m = json.loads((cfg.parent / "out" / "manifest.json").read_text())
    assert m["exit_code"] == 2 and not m["gate"]["passed"]
    assert any("retention" in f for f in m["gate"]["failures"])


def _cli(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeforge", "build", str(cfg)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr[-1500:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgeforge: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    return lines[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"qat.lr_typo": 1}, "qat.lr_typo: unknown key"),
        ({"distill.batch_size": -4}, "distill.batch_size"),
        ({"targets": ["onnx-cpu-int8", "iphone-99"]}, "unknown target 'iphone-99'; "),
        ({"teacher.checkpoint": "/nonexistent/teacher.pt"}, "teacher.checkpoint: checkpoint not found"),
        ({"teacher.kwargs": {"width": 8}}, "'body.0.weight' has shape (24, 1, 3, 3) but tiny_models:teacher builds (8,"),
        ({"teacher.kwargs": {"num_classes": 7}}, "'head.weight' has shape (4, 24)"),
        ({"teacher.kwargs": {"depth": 7}}, "does not take these arguments (got an unexpected keyword argument 'depth')"),
        ({"student.family": "resnet"}, "student.family: unknown student family 'resnet'; available: convnet"),
        ({"data.test": "/nonexistent/test.npz"}, "data.test: file not found"),
        ({"teacher.factory": "no_such_module:teacher"}, "cannot import module 'no_such_module'"),
    ],
)
def test_bad_input_one_line_exit_1(make_config, changes, expected) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(**changes)
    line = _one_line_error(_cli(cfg))
    assert expected in line
    assert not (cfg.parent / "out" / "manifest.json").exists()


def test_student_with_wrong_output_size(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "badstudent.py").write_text(
        "import torch\n\ndef student():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))\n")
    cfg = make_config(**{"student.family": None, "student.factory": "badstudent:student"})
    line = _one_line_error(_cli(cfg))
    assert "student: returns 7 logits but the data has 4 classes" in line


def test_pickled_code_checkpoint_is_refused(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    evil = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "hook": subprocess.Popen}, evil)
    line = _one_line_error(_cli(make_config(**{"teacher.checkpoint": str(evil)})))
    assert "weights_only=True" in line and "trust_checkpoint" in line


def test_empty_split_and_nan_inputs(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    line = _one_line_error(_cli(make_config(**{"data.val": str(tmp_path / "empty.npz")})))
    assert "split 'val' is empty" in line
    x = np.zeros((4, 1, 8, 8), np.float32)
    x[1, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(4, np.int64))
    line = _one_line_error(_cli(make_config(**{"data.val": str(tmp_path / "nan.npz")})))
    assert "NaN or inf" in line


def test_failing_target_is_recorded_and_others_go_on(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tdir = tmp_path / "mytargets"
    tdir.mkdir()
    (tdir / "onnx-nhwc.yaml").write_text("name: onnx-nhwc\nformat: onnx\nprecision: int8\ninput: {layout: NHWC}\n")
    out = tmp_path / "out"
    stale = out / "targets" / "onnx-nhwc" / "model.onnx"
    stale.parent.mkdir(parents=True)
    (out / ".edgeforge-output").write_text("")  # an earlier build's folder
    stale.write_bytes(b"left over from an older build")
    # preflight would stop this build before training; switch it off to exercise a failing export
    cfg = make_config(**{"targets": ["onnx-nhwc", "onnx-cpu-int8"], "target_dirs": [str(tdir)], "preflight": False})
    result = build(cfg, log=lambda _m: None)
    assert result.exit_code == 1
    bad, good = result.manifest["targets"]
    assert bad["status"] == "failed" and "input.layout: NCHW" in bad["reason"] and bad["artifact"] is None
    assert not stale.exists(), "a failed target must not leave an older artifact behind"
    assert good["status"] == "validated" and (out / good["artifact"]["path"]).is_file()
    assert result.manifest["gate"]["errors"] == [f"onnx-nhwc: {bad['reason']}"]
