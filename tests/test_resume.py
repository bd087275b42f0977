"""Builds survive SIGKILL: a rerun resumes from the last finished stage and ends with the same artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config, write_config

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CI": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
CHANGES = {"distill.epochs": 40, "qat.epochs": 4, "targets": ["onnx-cpu-int8"]}


def _cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "edgeforge", "build", str(cfg)]


def _hashes(out: Path) -> dict[str, str]:
    m = json.loads((out / "manifest.json").read_text())
    # the .pt2 carrier is compared by content: torch.export writes a random id into every file
    return {t["name"]: t["artifact"]["sha256"] for t in m["targets"]} | {
        "float_student": m["models"]["float_student"]["sha256"],
        "qat_simulation": m["models"]["qat_simulation"]["content_sha256"]}


@pytest.fixture(scope="module")
def reference(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ref")
    cfg = write_config(root / "e.yaml", tiny_config(tiny_assets, root / "out", **CHANGES))
    subprocess.run(_cmd(cfg), env=ENV, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return _hashes(root / "out")


@pytest.mark.parametrize("marker", ["[distill] 40 epochs", "[qat] 4 epochs", "[reference]"])
def test_sigkill_then_rerun_gives_identical_artifacts(marker: str, reference: dict[str, str], tiny_assets: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "e.yaml", tiny_config(tiny_assets, out, **CHANGES))
    proc = subprocess.Popen(_cmd(cfg), env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.time() + 300
    for line in proc.stderr:
        if line.startswith(marker):
            time.sleep(0.5)  # be inside the stage, not at its first line
            break
        assert time.time() < deadline
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    leftovers = [p.name for p in (out / "targets").rglob("*")] if (out / "targets").exists() else []
    assert all(n.startswith(".") or n == "onnx-cpu-int8" for n in leftovers), leftovers
    again = subprocess.run(_cmd(cfg), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    if marker != "[distill] 40 epochs":
        assert "[distill] best" in again.stderr and "(cached)" in again.stderr.split("[qat]")[0]
    assert _hashes(out) == reference
