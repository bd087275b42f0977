"""torchrun DDP on the CPU (gloo, 2 ranks): every rank ends with the same model, buffers and carrier, and a
2-rank build with batch B reaches the top-1 of one process with batch 2B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_ranks_hold_equal_parameters_buffers_and_carriers(tmp_path: Path) -> None:
    _run([*TORCHRUN, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2)
    for key in ("student", "qat_state", "carrier", "val_top1", "history"):
        assert r0[key] == r1[key], key
    buffers = r0["buffers"]
    assert any(b.endswith("running_mean") for b in buffers) and any(b.endswith("min_val") for b in buffers)


def test_two_ranks_batch_b_match_one_process_batch_2b(tiny_assets: Path, tmp_path: Path) -> None:
    changes = {"distill.epochs": 3, "qat.epochs": 1, "targets": ["onnx-cpu-fp32"], "preflight": False,
               "train.device": "cpu"}
    two = write_config(tmp_path / "two.yaml", tiny_config(tiny_assets, tmp_path / "two", **changes,
                                                          **{"distill.batch_size": 16, "qat.batch_size": 32}))
    one = write_config(tmp_path / "one.yaml", tiny_config(tiny_assets, tmp_path / "one", **changes,
                                                          **{"distill.batch_size": 32, "qat.batch_size": 64}))
    ran = _run([*TORCHRUN, "-m", "edgeforge", "build", str(two)])
    assert "training on cpu (fp32, 2 ranks, gloo)" in ran.stderr
    _run([sys.executable, "-m", "edgeforge", "build", str(one)])
    m2, m1 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("two", "one"))
    assert m2["training"]["processes"] == 2 and m2["training"]["backend"] == "gloo"
    assert m1["training"]["processes"] == 1
    for role in ("float_student", "qat_simulation"):
        assert abs(m2["models"][role]["top1"] - m1["models"][role]["top1"]) <= 0.01, role
    assert not (tmp_path / "two" / "manifest.json.tmp").exists()
