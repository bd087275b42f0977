"""Stage caching in real (tiny) builds: user-code edits re-run what they feed, one more target builds
only that target, and a format's rule is enforced at build time even with preflight off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeforge.pipeline import build

from conftest import tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.onnx]

STUDENT = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.{act}(self.conv(x)).mean((2, 3)))


def build():
    return Net()
'''


def _stages(m: dict[str, Any]) -> dict[str, bool]:
    runs = {s["name"]: s["cached"] for t in m["targets"] for s in t["stages"] if not s["name"].startswith("gate:")}
    return {**{k: v["cached"] for k, v in m["stages"].items()}, **runs}


def test_editing_the_student_factory_reruns_what_it_feeds(tiny_assets: Path, tmp_path: Path) -> None:
    code = tmp_path / "edit_me_student.py"
    code.write_text(STUDENT.format(act="relu"))
    cfg = tiny_config(tiny_assets, tmp_path / "out", **{"student": {"factory": "edit_me_student:build"},
                                                          "distill.epochs": 3, "qat.epochs": 1, "preflight": False})
    path = write_config(tmp_path / "edgeforge.yaml", cfg)
    first = build(path, log=lambda _m: None).manifest
    again = build(path, log=lambda _m: None).manifest
    assert all(_stages(again).values()), "an unchanged rebuild comes entirely from the cache"
    code.write_text(STUDENT.format(act="tanh"))
    edited = build(path, log=lambda _m: None).manifest
    assert not any(_stages(edited).values()), f"every stage the factory feeds re-ran: {_stages(edited)}"
    fp32 = {t["name"]: t for t in edited["targets"]}["onnx-cpu-fp32"]
    assert fp32["metrics"]["max_abs_diff"] <= 1e-4, "the fp32 artifact is the new architecture with its own weights"
    assert edited["models"]["float_student"]["sha256"] != first["models"]["float_student"]["sha256"]


def test_one_more_target_builds_only_that_target(tiny_assets: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_assets, tmp_path / "out", **{"distill.epochs": 3, "qat.epochs": 1,
                                                          "targets": ["onnx-cpu-int8"]})
    path = write_config(tmp_path / "edgeforge.yaml", cfg)
    build(path, log=lambda _m: None)
    log: list[str] = []
    m = build(path, targets=["onnx-cpu-int8", "onnx-cpu-fp32"], log=log.append).manifest
    st = _stages(m)
    assert st["preflight"] is False, "preflight covers the new target's profile"
    assert st["distill"] and st["qat"] and st["reference"]
    assert st["export:onnx-cpu-int8"] and st["validate:onnx-cpu-int8"]
    assert not st["export:onnx-cpu-fp32"] and not st["validate:onnx-cpu-fp32"]
    assert any("stages from the cache" in line for line in log)
    assert {t["name"]: t["status"] for t in m["targets"]} == {"onnx-cpu-int8": "validated", "onnx-cpu-fp32": "validated"}


@pytest.mark.tflite
def test_float_ops_in_a_full_int8_tflite_fail_the_gate_without_preflight(tiny_assets: Path, tmp_path: Path) -> None:
    code = tmp_path / "float_op_student.py"
    code.write_text(STUDENT.format(act="sin"))  # no int8 SIN kernel: the op stays float in the file
    cfg = tiny_config(tiny_assets, tmp_path / "out", **{"student": {"factory": "float_op_student:build"},
                                                          "distill.epochs": 2, "qat.epochs": 1, "preflight": False,
                                                          "targets": ["tflite-cpu-int8"], "gate.min_retention": 0.1,
                                                          "gate.max_drift_points": 100, "gate.min_agreement": 0})
    result = build(write_config(tmp_path / "edgeforge.yaml", cfg), log=lambda _m: None)
    checks = {c["name"]: c for c in result.manifest["targets"][0]["checks"]}
    assert result.exit_code == 2 and not checks["float_ops"]["passed"], checks
    assert "allow_float_ops" in checks["float_ops"]["message"]
