"""The bad-input corpus: every case exits 1 with one line naming the problem, no traceback, nothing corrupted."""

from __future__ import annotations

import json
import re
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
    yh = y.copy()
    yh[3] = 2**40
    np.savez(tmp / "hugelab.npz", x=x, y=yh)
    f["hugelab_npz"] = tmp / "hugelab.npz"
    np.savez(tmp / "hugefloatlab.npz", x=x, y=np.where(np.arange(16) == 3, 1e30, y.astype(np.float64)))
    f["hugefloatlab_npz"] = tmp / "hugefloatlab.npz"
    xb = x.astype(np.float64)
    xb[5, 0, 2, 2] = 1e30
    np.savez(tmp / "bigpix.npz", x=xb, y=y)
    f["bigpix_npz"] = tmp / "bigpix.npz"
    np.savez(tmp / "strx.npz", x=np.full((16, 1, 8, 8), "a"), y=y)
    f["strx_npz"] = tmp / "strx.npz"
    np.savez(tmp / "complexx.npz", x=x.astype(np.complex64), y=y)
    f["complexx_npz"] = tmp / "complexx.npz"
    (tmp / "not_manifest.json").write_text('{"schema": "something-else/1", "targets": {}}')
    f["not_manifest"] = tmp / "not_manifest.json"
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
        "def bad_dataset(split):\n    return [1, 2, 3]\n"
        "class NanTeacher(torch.nn.Module):\n"
        "    def forward(self, x):\n        return torch.full((x.shape[0], 4), float('nan'))\n"
        "def nan_teacher():\n    return NanTeacher()\n"
        "class SqueezingTeacher(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x.flatten(1)[:, :4].squeeze()\n"
        "def squeezing_teacher():\n    return SqueezingTeacher()\n"
        "def teacher_with_width(width=24):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))\n")
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
    ("student-family-unknown", {"student.family": "vit"}, "unknown student family 'vit'; available: convnet"),
    ("student-wrong-outputs", {"student.family": None, "student.factory": "factories:wide_student"}, "student: returns 9 logits"),
    ("student-crashes", {"student.family": None, "student.factory": "factories:crashing_student"}, "student: fails on an input of shape (1, 1, 8, 8)"),
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
    ("unknown-target", {"targets": ["pixel-99"]}, "unknown target 'pixel-99'"),
    ("target-bad-field", {"targets": ["bad-field"]}, "bad-field.yaml: runtime.threads"),
    ("target-name-mismatch", {"targets": ["renamed"]}, "name 'other-name' differs from the file name"),
    ("target-layout-unsupported", {"targets": ["onnx-nhwc"]}, "the ONNX exporter writes NCHW float32 (and integer token) inputs; set input.layout: NCHW"),
    ("target-format-unknown", {"targets": ["weird"]}, "weird.yaml: format"),
    # labels, dtypes and value ranges, checked before anything is sized by them
    ("huge-label-no-class-names", {"data.train": "@hugelab_npz"}, "data.train: label 1099511627776 but only 16 training samples"),
    ("huge-label-with-class-names", {"data.train": "@hugelab_npz", "data.class_names": list("abcd")},
     "data.class_names: 4 names for 1099511627777 classes"),
    ("huge-float-label", {"data.val": "@hugefloatlab_npz"}, "has label 1000000000000000019884624838656"),
    ("huge-pixel", {"data.test": "@bigpix_npz"}, "holds a value of 1e+30; inputs beyond +-65504"),
    ("string-inputs", {"data.val": "@strx_npz"}, "inputs of split 'val' have dtype <U1; need real numbers"),
    ("complex-inputs", {"data.val": "@complexx_npz"}, "have dtype complex64; need real numbers"),
    ("teacher-nan-logits", {"teacher.factory": "factories:nan_teacher", "teacher.checkpoint": None},
     "teacher: returns NaN or inf logits for a batch of 1 training inputs"),
    ("teacher-fails-at-batch-1", {"teacher.factory": "factories:squeezing_teacher", "teacher.checkpoint": None},
     "teacher: must return logits of shape [batch, classes], got (4,) for a batch of 1"),
    # config values that used to fail only after training
    ("seed-too-large", {"distill.seed": 2**40}, "distill.seed: Input should be less than or equal to 4294967295"),
    ("seed-negative", {"qat.seed": -1}, "qat.seed"),
    ("calibration-seed-too-large", {"data.calibration": {"seed": 2**64}}, "data.calibration"),
    ("teacher-kwarg-unknown", {"teacher.kwargs": {"widht": 8}},
     "teacher.kwargs: tiny_models:teacher does not take these arguments (got an unexpected keyword argument 'widht')"),
    ("teacher-factory-kwarg-unknown", {"teacher.factory": "factories:teacher_with_width", "teacher.checkpoint": None,
                                       "teacher.kwargs": {"depth": 3}}, "its parameters: width"),
    ("student-kwarg-unknown", {"student.kwargs": {"dropout": 0.1}},
     "student.kwargs: student family 'convnet' does not take these arguments"),
    ("student-kwarg-reserved", {"student.kwargs": {"width": 4}}, "student.kwargs: width is set by edgeforge"),
    ("baseline-missing", {"baseline": "/nonexistent/manifest.json"}, "baseline: /nonexistent/manifest.json not found"),
    ("baseline-not-a-manifest", {"baseline": "@not_manifest"}, "is not an edgeforge manifest (schema 'something-else/1')"),
    ("baseline-not-json", {"baseline": "@cal_unknown"}, "is not JSON"),
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
     ("name: x\n\tbad: tab\n", "malformed YAML"),
     ("name: a\noutput: b\nname: c\n", "duplicate key 'name' at line 3 (first at line 1)"),
     ("name: a\nteacher:\n  kwargs: &k {a: *k}\n", "teacher.kwargs.a: a YAML alias refers to itself"),
     ("name: a\nteacher:\n  kwargs:\n" + "".join(
         f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 10)}]\n" for i in range(7)),
      "teacher.kwargs.l4: expands to more than 100,000 values")],
    ids=["unclosed", "top-level-list", "empty", "tab", "duplicate-key", "self-alias", "alias-bomb"],
)
def test_malformed_files(text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    _assert_one_line(*_run(["build", str(p)], capsys), expected)


def test_missing_config_and_bad_set(tmp_path: Path, make_config, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    _assert_one_line(*_run(["build", str(tmp_path / "none.yaml")], capsys), "none.yaml: file not found")
    _assert_one_line(*_run(["build", str(make_config()), "--set", "gate.min_retention"], capsys), "expected KEY=VALUE")
    _assert_one_line(*_run(["build", str(make_config()), "--set", "teacher.kwargs=[1,"], capsys),
                     "--set teacher.kwargs: malformed YAML at line 1")
    _assert_one_line(*_run(["build", str(make_config()), "--set", "teacher.kwargs=&a [*a]"], capsys),
                     "a YAML alias refers to itself")


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


class _CreatesFile:
    """A pickle payload: unpickling it opens (creates) a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def _pickled(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _craft(clean: Path, dst: Path, how: str, victim: Path) -> Path:
    """Rewrite one part of a real torch.export archive so that loading (or running) it creates ``victim``."""
    import zipfile

    extra: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if how == "sample-inputs" and name.endswith("data/sample_inputs/model.pt"):
                data = _pickled(_CreatesFile(str(victim)))
            elif how == "pickled-weight" and name.endswith("model_weights_config.json"):
                table = json.loads(data)
                table["config"]["head.bias"].update(use_pickle=True, path_name="weight_x")
                data = json.dumps(table).encode()
                extra.append((name.replace("model_weights_config.json", "weight_x"), _pickled(_CreatesFile(str(victim)))))
            elif how == "shape-expression" and name.endswith("models/model.json"):
                sym = re.search(rb"Symbol\('s\d+', positive=True, integer=True\)", data)
                assert sym, "the clean program has a dynamic batch"
                data = data.replace(sym.group(0), f"__import__('os').system('touch {victim}')".encode(), 1)
            elif how == "graph-target" and name.endswith("models/model.json"):
                data = data.replace(b"torch.ops.aten.relu.default", b"torch.os.system", 1)
            zout.writestr(name, data)
        for name, data in extra:
            zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def clean_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torch.export import Dim

    from tiny_models import TinyTeacher

    path = tmp_path_factory.mktemp("program") / "teacher.pt2"
    ep = torch.export.export(TinyTeacher().eval(), (torch.zeros(2, 1, 8, 8),),
                             dynamic_shapes=({0: Dim("batch", min=1, max=1024)},))
    torch.export.save(ep, str(path))
    return path


PAYLOADS = [("sample-inputs", "is not plain tensors"), ("pickled-weight", "is stored as a pickled object"),
            ("shape-expression", "a shape expression is not plain arithmetic"),
            ("graph-target", "the graph calls 'torch.os.system', which is not a torch operator")]


@pytest.mark.parametrize(("how", "expected"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_teacher_program_payload_never_runs(how: str, expected: str, clean_program: Path, tiny_assets: Path,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "pwned"
    crafted = _craft(clean_program, tmp_path / "teacher.pt2", how, victim)
    cfg = tiny_config(tiny_assets, tmp_path / "out", **{"teacher.factory": None, "teacher.checkpoint": None,
                                                        "teacher.program": str(crafted)})
    path = tmp_path / "edgeforge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = _run(["build", str(path)], capsys)
    _assert_one_line(code, err, f"teacher.program: {crafted} was refused: ")
    assert expected in err and "set teacher.trust_checkpoint: true only if you trust the file" in err
    assert not victim.exists()


@pytest.mark.parametrize("how", [p[0] for p in PAYLOADS])
def test_tampered_carrier_is_refused_without_running(how: str, clean_program: Path, tmp_path: Path) -> None:
    from edgeforge.models.program_file import UnsafeProgramError
    from edgeforge.quant.qat import load_carrier

    victim = tmp_path / "pwned"
    crafted = _craft(clean_program, tmp_path / "student_qat.pt2", how, victim)
    with pytest.raises(UnsafeProgramError):
        load_carrier(str(crafted))
    assert not victim.exists()


def test_clean_program_loads_and_the_stock_loader_would_have_run_the_payload(clean_program: Path,
                                                                           tmp_path: Path) -> None:
    from edgeforge.models.program_file import load_program

    x = torch.randn(3, 1, 8, 8)
    assert load_program(clean_program).module()(x).shape == (3, 4)
    victim = tmp_path / "pwned"
    crafted = _craft(clean_program, tmp_path / "t.pt2", "sample-inputs", victim)
    with pytest.raises(Exception):  # noqa: B017  torch fails after the payload ran
        torch.export.load(str(crafted))
    assert victim.exists(), "torch.export.load no longer unpickles sample inputs: re-check program_file's rules"


@pytest.mark.parametrize("where", ["user-folder", "root", "home", "config-folder", "planted-lock-link"])
def test_output_folder_is_protected(where: str, make_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from edgeforge.outdir import MARKER

    (tmp_path / "mine").mkdir()
    victim = tmp_path / "mine" / "notes.txt"
    victim.write_text("keep me")
    out = {"user-folder": tmp_path / "mine", "root": Path("/"), "home": Path.home(), "config-folder": tmp_path,
           "planted-lock-link": tmp_path / "out"}[where]
    if where == "planted-lock-link":
        out.mkdir()
        (out / MARKER).write_text("")
        (out / ".edgeforge.lock").symlink_to(victim)
    cfg = make_config(output=str(out))
    before = sorted(p.name for p in out.iterdir())
    code, err = _run(["build", str(cfg)], capsys)
    expected = {"user-folder": "already holds files edgeforge did not write (notes.txt)", "root": "is the root folder",
                "home": "is your home folder", "config-folder": "is the config's own folder",
                "planted-lock-link": ".edgeforge.lock is a symbolic link; remove it"}[where]
    _assert_one_line(code, err, expected)
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == before
