"""Builds survive SIGKILL: a rerun resumes from the last finished stage and ends with the same artifacts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeforge.outdir import MARKER

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


def _build(tiny_assets: Path, root: Path, changes: dict[str, Any]) -> Path:
    """An uninterrupted build; returns its output folder."""
    cfg = write_config(root / "e.yaml", tiny_config(tiny_assets, root / "out", **changes))
    done = subprocess.run(_cmd(cfg), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "out"


def _kill_at(cfg: Path, marker: str) -> None:
    """Start a build and SIGKILL it half a second after a stderr line starting with ``marker``."""
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


@pytest.fixture(scope="module")
def reference(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _hashes(_build(tiny_assets, tmp_path_factory.mktemp("ref"), CHANGES))


@pytest.mark.parametrize("marker", ["[distill] 40 epochs", "[qat] 4 epochs", "[reference]"])
def test_sigkill_then_rerun_gives_identical_artifacts(marker: str, reference: dict[str, str], tiny_assets: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "e.yaml", tiny_config(tiny_assets, out, **CHANGES))
    _kill_at(cfg, marker)
    assert not (out / "manifest.json").exists()
    leftovers = [p.name for p in (out / "targets").rglob("*")] if (out / "targets").exists() else []
    assert all(n.startswith(".") or n == "onnx-cpu-int8" for n in leftovers), leftovers
    again = subprocess.run(_cmd(cfg), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    if marker != "[distill] 40 epochs":
        assert "[distill] best" in again.stderr and "(cached)" in again.stderr.split("[qat]")[0]
    assert _hashes(out) == reference


# One int8 target per format, in this order: the kill lands in the Core ML export, after the ONNX and
# TFLite targets are done (cached) and before the ExecuTorch one starts. Short training, no preflight:
# what is checked is that each exporter writes the same bytes again (kills during training are above).
FORMATS = {"targets": ["onnx-cpu-int8", "tflite-cpu-int8", "coreml-iphone-int8", "executorch-cpu-int8"],
           "preflight": False, "distill.epochs": 3, "qat.epochs": 1, "gate.min_retention": 0.5,
           "gate.max_drift_points": 10.0}


def _seed_model_stages(reference: Path, out: Path) -> None:
    """Give ``out`` the reference build's finished training stages, as a run killed after them would have.

    Cache keys do not depend on the output folder, so the killed run starts at its exports (saves
    the minutes of a second distillation and QAT on a loaded 2-core machine).
    """
    (out / "cache").mkdir(parents=True)
    shutil.copy2(reference / MARKER, out / MARKER)
    for entry in (reference / "cache").iterdir():
        if entry.name.split("-")[0] in ("distill", "qat", "reference"):
            shutil.copytree(entry, out / "cache" / entry.name)


@pytest.mark.tflite
@pytest.mark.coreml
@pytest.mark.executorch
def test_sigkill_during_an_export_then_rerun_gives_identical_artifacts_in_every_format(
        tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    for module in ("litert_torch", "coremltools", "executorch"):
        pytest.importorskip(module)
    ref_out = _build(tiny_assets, tmp_path_factory.mktemp("ref4"), FORMATS)
    reference = json.loads((ref_out / "manifest.json").read_text())
    root = tmp_path_factory.mktemp("killed4")
    out = root / "out"
    _seed_model_stages(ref_out, out)
    cfg = write_config(root / "e.yaml", tiny_config(tiny_assets, out, **FORMATS))
    _kill_at(cfg, "[validate:tflite-cpu-int8]")
    assert not (out / "manifest.json").exists()
    again = subprocess.run(_cmd(cfg), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((out / "manifest.json").read_text())
    # what the manifest records: a file's sha256, or a package folder's digest over sorted paths and contents
    recorded = {t["name"]: (t["artifact"]["digest_kind"], t["artifact"]["sha256"]) for t in resumed["targets"]}
    assert recorded == {t["name"]: (t["artifact"]["digest_kind"], t["artifact"]["sha256"])
                        for t in reference["targets"]}
    assert len(recorded) == 4 and recorded["coreml-iphone-int8"][0] == "folder"
    # the rerun resumed: the exports finished before the kill came from the cache, the killed one was redone
    exports = {ln.split("]")[0][len("[export:"):]: ln.endswith("(cached)") for ln in again.stderr.splitlines()
               if ln.startswith("[export:")}
    assert exports == {"onnx-cpu-int8": True, "tflite-cpu-int8": True, "coreml-iphone-int8": False,
                       "executorch-cpu-int8": False}, again.stderr[-2000:]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "a killed export's temp folder was left behind"
