"""Resumable epochs: a run killed in the middle of epoch k restarts at epoch k, not at the start of the
stage, and ends with exactly what an uninterrupted run ends with (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_resume import _cmd, _hashes

from edgeforge.data import Split
from edgeforge.resume import FILE, EpochCheckpoint
from edgeforge.training import TrainContext, fit, make_optimizer

from conftest import tiny_config, write_config
from tiny_models import TinyTeacher, make_patterns

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
EPOCHS = 8
CHANGES = {"distill.epochs": EPOCHS, "qat.epochs": 1, "targets": ["onnx-cpu-int8"], "preflight": False}


class _Killed(Exception):
    pass


def _fit(folder: Path, epochs: int, stop_at: int | None = None) -> tuple[dict[str, torch.Tensor], list[float]]:
    torch.manual_seed(0)
    x, y = make_patterns(96, 0)
    split = Split("train", torch.from_numpy(x), torch.from_numpy(y))
    model = TinyTeacher(num_classes=4, width=8)  # BatchNorm: running stats are part of the state
    opt = make_optimizer("adamw", model.parameters(), 0.01, 1e-4)

    def start(epoch: int) -> None:
        if epoch == stop_at:
            raise _Killed

    result = fit(model, train=split, val=split, step_loss=lambda _i, xb, yb: F.cross_entropy(model(xb), yb),
                 optimizer=opt, epochs=epochs, batch_size=16, schedule="cosine", warmup=1, seed=3, stage="distill",
                 show_progress=False, on_epoch_start=start, ctx=TrainContext(checkpoint=EpochCheckpoint(folder)))
    return model.state_dict(), [h.loss for h in result.history]


def test_fit_resumes_bit_for_bit(tmp_path: Path) -> None:
    whole, whole_losses = _fit(tmp_path / "a", 4)
    with pytest.raises(_Killed):
        _fit(tmp_path / "b", 4, stop_at=2)
    saved = torch.load(tmp_path / "b" / FILE, weights_only=True)
    assert saved["epoch"] == 2
    resumed, resumed_losses = _fit(tmp_path / "b", 4)
    assert resumed_losses == whole_losses  # epochs 1-2 come from the checkpoint, 3-4 are retrained
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


# QAT epochs of the tiny student take a fraction of a second: a larger training split gives the kill time to land
QAT_CHANGES = {"distill.epochs": 2, "qat.epochs": 6, "qat.batch_size": 16, "targets": ["onnx-cpu-int8"],
               "preflight": False, "data.augment": {"hflip": True, "crop_padding": 1}}


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "changes"), [("distill", CHANGES), ("qat", QAT_CHANGES)])
def test_sigkill_in_a_training_epoch_resumes_there(tiny_assets: Path, tmp_path: Path, stage: str,
                                                   changes: dict[str, object]) -> None:
    """Killed in the middle of epoch k of a stage, the rerun starts at epoch k and ends with the same files.

    The QAT case trains on augmented batches, so the resumed epochs must also redraw the same augmentation.
    """
    epochs = int(changes[f"{stage}.epochs"])  # type: ignore[call-overload]
    ref = tmp_path / "ref"
    subprocess.run(_cmd(write_config(tmp_path / "ref.yaml", tiny_config(tiny_assets, ref, **changes))), env=ENV,
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "e.yaml", tiny_config(tiny_assets, out, **changes))
    proc = subprocess.Popen(_cmd(cfg), env=ENV, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((out / "cache" / "partial").glob(f"{stage}-*/{FILE}")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    [ckpt] = list((out / "cache" / "partial").glob(f"{stage}-*/{FILE}"))
    done = int(torch.load(ckpt, weights_only=True)["epoch"])
    assert 1 <= done < epochs
    again = subprocess.run(_cmd(cfg), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"[{stage}] resuming at epoch {done + 1}/{epochs} (epochs 1-{done} were saved" in again.stderr
    assert _hashes(out) == _hashes(ref)
    assert json.loads((out / "manifest.json").read_text())["stages"][stage]["resumed_at_epoch"] == done + 1
    assert not list((out / "cache" / "partial").iterdir())  # checkpoints go once the stages are complete
