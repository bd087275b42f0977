"""The bad-input corpus: every case exits 1 with one line naming the problem, no traceback, nothing corrupted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from edgeforge.cli import main

from conftest import tiny_config
from tiny_models import make_patterns

pytestmark = pytest.mark.onnx


def _files(tmp: Path) -> dict[str, Path]:
    """Broken inputs, written on demand."""
    f: dict[str, Path] = {}
    x, y = make_patterns(16, 7)
    f["empty_ckpt"] = tmp / "empty.pt"
    f["empty_ckpt"].write_bytes(b"")
    f["garbage_ckpt"] = tmp / "garbage.pt"
    f["garbage_ckpt"].write_bytes(b"\x00not a checkpoint")
    f["code_ckpt"] = tmp / "code.pt"
    torch.save({"w": torch.zeros(1), "run": subprocess.Popen}, f["code_ckpt"])
    f["nodict_ckpt"] = tmp / "nodict.pt"
    torch.save([1, 2, 3], f["nodict_ckpt"])
    f["ts_garbage"] = tmp / "bad.ts"
    f["ts_garbage"].write_bytes(b"garbage")
    f["pt2_garbage"] = tmp / "bad.pt2"
    f["pt2_garbage"].write_bytes(b"garbage")
    f["corrupt_npz"] = tmp / "corrupt.npz"
    f["corrupt_npz"].write_bytes(b"PK\x03\x04broken")
    np.savez(tmp / "nokey.npz", images=x, labels=y)
    f["nokey_npz"] = tmp / "nokey.npz"
    np.savez(tmp / "empty.npz", x=x[:0], y=y[:0])
    f["empty_npz"] = tmp / "empty.npz"
    xn = x.copy()
    xn[2, 0, 3, 3] = np.nan
    np.savez(tmp / "nan.npz", x=xn, y=y)
    f["nan_npz"] = tmp / "nan.npz"
    xi = x.copy()
    xi[0, 0, 0, 0] = np.inf
    np.savez(tmp / "inf.npz", x=xi, y=y)
    f["inf_npz"] = tmp / "inf.npz"
    np.savez(tmp / "floatlab.npz", x=x, y=y + 0.5)
    f["floatlab_npz"] = tmp / "floatlab.npz"
    np.savez(tmp / "neglab.npz", x=x, y=y - 5)
    f["neglab_npz"] = tmp / "neglab.npz"
    yb = y.copy()
    yb[0] = 9
    np.savez(tmp / "unseen.npz", x=x, y=yb)
    f["unseen_npz"] = tmp / "unseen.npz"
    np.savez(tmp / "shape.npz", x=np.zeros((16, 1, 10, 10), np.float32), y=y)
    f["shape_npz"] = tmp / "shape.npz"
    np.savez(tmp / "count.npz", x=x, y=y[:10])
    f["count_npz"] = tmp / "count.npz"
    np.savez(tmp / "rank.npz", x=np.zeros((16, 64), np.float32), y=y)
    f["rank_npz"] = tmp / "rank.npz"
    x3, y3 = make_patterns(64, 8, num_classes=3)
    np.savez(tmp / "three.npz", x=x3, y=y3)
    f["three_npz"] = tmp / "three.npz"
    (tmp / "cal_unknown.yaml").write_text("samples: 8\nsplitt: train\n")
    f["cal_unknown"] = tmp / "cal_unknown.yaml"
    (tmp / "targets").mkdir()
    (tmp / "targets" / "bad-field.yaml").write_text("name: bad-field\nformat: onnx\nprecision: int8\nruntime: {threads: 0}\n")
    (tmp / "targets" / "renamed.yaml").write_text("name: other-name\nformat: onnx\nprecision: int8\n")
    (tmp / "targets" / "onnx-nhwc.yaml").write_text("name: onnx-nhwc\nformat: onnx\nprecision: int8\ninput: {layout: NHWC}\n")
    (tmp / "targets" / "weird.yaml").write_text("name: weird\nformat: tensorrt\nprecision: int8\n")
    (tmp / "factories.py").write_text(
        "import torch\n"
        "def raises():\n    raise RuntimeError('boom')\n"
        "def not_module():\n    return 42\n"
        "def wide_student():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 9))\n"
        "def crashing_student():\n    return torch.nn.Linear(3, 4)\n"
        "def bad_dataset(split):\n    return [1, 2, 3]\n")
    return f


# (id, config changes, expected fragment of the one-line error). Values "@name" are files from _files().
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-top-key", {"pipeline": 1}, "pipeline: unknown key"),
    ("unknown-nested-key", {"distill.temprature": 3}, "distill.temprature: unknown key (allowed:"),
    ("wrong-type", {"distill.epochs": "ten"}, "distill.epochs"),
    ("negative-lr", {"qat.lr": -1}, "qat.lr"),
    ("alpha-range", {"distill.alpha": 2}, "distill.alpha"),
    ("zero-temperature", {"distill.temperature": 0}, "distill.temperature"),
    ("no-targets", {"targets": []}, "targets"),
    ("duplicate-targets", {"targets": ["onnx-cpu-int8", "onnx-cpu-int8"]}, "targets listed twice: onnx-cpu-int8"),
    ("bad-name", {"name": "my model"}, "name"),
    ("two-teacher-sources", {"teacher.torchscript": "t.ts"}, "exactly one of factory, torchscript or program"),
    ("checkpoint-without-factory", {"teacher.factory": None, "teacher.torchscript": "t.ts"}, "checkpoint goes with factory"),
    ("bad-factory-syntax", {"teacher.factory": "not a factory"}, "teacher.factory"),
    ("unknown-data-kind", {"data.kind": "parquet"}, "data.kind"),
    ("factory-kind-without-factory", {"data.kind": "factory"}, "kind 'factory' needs a factory"),
    ("image-folder-without-size", {"data.kind": "image_folder"}, "needs image_size"),
    ("calibration-file-missing", {"data.calibration": "nope.yaml"}, "nope.yaml: file not found"),
    ("calibration-unknown-key", {"data.calibration": "@cal_unknown"}, "splitt: unknown key"),
    ("calibration-bad-selection", {"data.calibration": {"selection": "best"}}, "data.calibration"),
    ("missing-checkpoint", {"teacher.checkpoint": "/nonexistent.pt"}, "checkpoint not found"),
    ("empty-checkpoint", {"teacher.checkpoint": "@empty_ckpt"}, "is empty (0 bytes)"),
    ("corrupt-checkpoint", {"teacher.checkpoint": "@garbage_ckpt"}, "not a readable checkpoint"),
    ("code-in-checkpoint", {"teacher.checkpoint": "@code_ckpt"}, "refused by torch.load(weights_only=True)"),
    ("checkpoint-not-a-state-dict", {"teacher.checkpoint": "@nodict_ckpt"}, "holds no state_dict"),
    ("checkpoint-mismatch", {"teacher.kwargs": {"width": 8}}, "has shape (24, 1, 3, 3)"),
    ("factory-raises", {"teacher.factory": "factories:raises", "teacher.checkpoint": None}, "factories:raises() failed: RuntimeError: boom"),
    ("factory-not-module", {"teacher.factory": "factories:not_module", "teacher.checkpoint": None}, "returned int, not a torch.nn.Module"),
    ("factory-missing-attr", {"teacher.factory": "factories:nope", "teacher.checkpoint": None}, "'factories' has no callable 'nope'"),
    ("factory-module-missing", {"teacher.factory": "nowhere:teacher"}, "cannot import module 'nowhere'"),
    ("torchscript-missing", {"teacher.factory": None, "teacher.checkpoint": None, "teacher.torchscript": "x.ts"}, "teacher.torchscript: file not found"),
    ("torchscript-corrupt", {"teacher.factory": None, "teacher.checkpoint": None, "teacher.torchscript": "@ts_garbage"}, "is not a TorchScript file"),
    ("program-corrupt", {"teacher.factory": None, "teacher.checkpoint": None, "teacher.program": "@pt2_garbage"}, "is not a torch.export program"),
    ("teacher-student-classes", {"data.train": "@three_npz", "data.val": "@three_npz", "data.test": "@three_npz"}, "teacher: returns 4 logits but the data has 3 classes"),
    ("student-family-unknown", {"student.family": "vit"}, "unknown student family 'vit'; available: convnet, separable"),
    ("student-wrong-outputs", {"student.family": None, "student.factory": "factories:wide_student"}, "student: returns 9 logits"),
    ("student-crashes", {"student.family": None, "student.factory": "factories:crashing_student"}, "student: fails on an input of shape (2, 1, 8, 8)"),
    ("missing-npz", {"data.val": "/nonexistent/val.npz"}, "data.val: file not found"),
    ("corrupt-npz", {"data.val": "@corrupt_npz"}, "not a readable .npz archive"),
    ("npz-missing-key", {"data.val": "@nokey_npz"}, "no array named x, y (has: images, labels)"),
    ("empty-split", {"data.val": "@empty_npz"}, "split 'val' is empty"),
    ("nan-inputs", {"data.test": "@nan_npz"}, "1 sample(s) of split 'test' hold NaN or inf"),
    ("inf-inputs", {"data.train": "@inf_npz"}, "hold NaN or inf"),
    ("float-labels", {"data.val": "@floatlab_npz"}, "labels must be integers"),
    ("negative-labels", {"data.val": "@neglab_npz"}, "negative labels"),
    ("label-not-in-train", {"data.test": "@unseen_npz"}, "label 9 never occurs in train"),
    ("split-shape-mismatch", {"data.test": "@shape_npz"}, "input shape (1, 10, 10) differs from train's (1, 8, 8)"),
    ("label-count-mismatch", {"data.val": "@count_npz"}, "one integer per sample"),
    ("inputs-wrong-rank", {"data.val": "@rank_npz"}, "inputs must be N x C x H x W"),
    ("dataset-factory-bad-items", {"data.kind": "factory", "data.factory": "factories:bad_dataset"}, "must yield (input, label) pairs"),
    ("class-names-count", {"data.class_names": ["a", "b"]}, "2 names for 4 classes"),
    ("unknown-target", {"targets": ["pixel-99"]}, "unknown target 'pixel-99'; available:"),
    ("target-bad-field", {"targets": ["bad-field"]}, "bad-field.yaml: runtime.threads"),
    ("target-name-mismatch", {"targets": ["renamed"]}, "name 'other-name' differs from the file name"),
    ("target-layout-unsupported", {"targets": ["onnx-nhwc"]}, "preflight failed for 1 target(s): target onnx-nhwc: the ONNX exporter writes NCHW"),
    ("target-format-unknown", {"targets": ["weird"]}, "weird.yaml: format"),
]


@pytest.fixture
def corpus(tiny_assets: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    return tmp_path, _files(tmp_path)


def _resolve(v: Any, files: dict[str, Path]) -> Any:
    if isinstance(v, str) and v.startswith("@"):
        return str(files[v[1:]])
    if isinstance(v, list):
        return [_resolve(i, files) for i in v]
    return v


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _assert_one_line(code: int, err: str, expected: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("edgeforge: error:")]
    assert code == 1, err[-1500:]
    assert len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config(changes: dict[str, Any], expected: str, corpus, tiny_assets: Path,  # type: ignore[no-untyped-def]
                    capsys: pytest.CaptureFixture[str]) -> None:
    tmp, files = corpus
    out = tmp / "out"
    cfg = tiny_config(tiny_assets, out, **{k: _resolve(v, files) for k, v in changes.items()},
                      **{"target_dirs": [str(tmp / "targets")]})
    path = tmp / "edgeforge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = _run(["build", str(path)], capsys)
    _assert_one_line(code, err, expected)
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("name: [unclosed\n", "malformed YAML at line"), ("- a\n- b\n", "expected a mapping"), ("", "the file is empty"),
     ("name: x\n\tbad: tab\n", "malformed YAML")],
    ids=["unclosed", "top-level-list", "empty", "tab"],
)
def test_malformed_files(text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    _assert_one_line(*_run(["build", str(p)], capsys), expected)


def test_missing_config_and_bad_set(tmp_path: Path, make_config, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    _assert_one_line(*_run(["build", str(tmp_path / "none.yaml")], capsys), "none.yaml: file not found")
    _assert_one_line(*_run(["build", str(make_config()), "--set", "gate.min_retention"], capsys), "expected KEY=VALUE")


def test_output_not_writable(make_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file, not a folder")
    code, err = _run(["build", str(make_config(output=str(blocker / "out")))], capsys)
    _assert_one_line(code, err, "output: cannot write to")
    assert blocker.read_text() == "I am a file, not a folder"


def test_second_build_into_a_locked_folder_is_refused(make_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from edgeforge.lock import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        code, err = _run(["build", str(make_config())], capsys)
    _assert_one_line(code, err, "is in use by another edgeforge build")


def test_nan_loss_aborts_and_keeps_last_good_checkpoint(make_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "diverging.py").write_text(
        "import torch\nfrom edgeforge.models.students import ConvNet\n"
        "class Diverging(ConvNet):\n"
        "    calls = 0\n"
        "    def forward(self, x):\n"
        "        y = super().forward(x)\n"
        "        if self.training:\n"
        "            Diverging.calls += 1\n"
        "            if Diverging.calls > 20:\n"
        "                return y * float('nan')\n"
        "        return y\n"
        "def student():\n    return Diverging(1, 4, width=8, depth=1)\n")
    cfg = make_config(**{"student.family": None, "student.factory": "diverging:student"})
    code, err = _run(["build", str(cfg)], capsys)
    _assert_one_line(code, err, "distill: the loss became nan at epoch 2; lower distill.lr")
    kept = tmp_path / "out" / "student_float.last_good.pt"
    assert f"the last good checkpoint is kept in {kept}" in err
    state = torch.load(kept, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_full_disk(make_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        code, err = _run(["build", str(make_config(output=str(mnt / "out")))], capsys)
        _assert_one_line(code, err, "No space left on device")
        leftovers = [p for p in mnt.rglob("*") if p.is_file() and p.name == "manifest.json"]
        assert not leftovers
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_corpus_is_large() -> None:
    assert len(CASES) + 4 + 2 + 4 >= 40
    assert json.dumps([c[0] for c in CASES])  # ids are unique strings
    assert len({c[0] for c in CASES}) == len(CASES)
