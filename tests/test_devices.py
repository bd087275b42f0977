"""train.device / train.precision: resolution, one-line errors, bf16 autocast of distillation on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeforge import cli
from edgeforge.config import BuildConfig, DistillConfig
from edgeforge.data import DataBundle, Split
from edgeforge.devices import Compute, resolve_device
from edgeforge.distill import distill
from edgeforge.errors import ConfigError
from edgeforge.models.students import STUDENTS
from edgeforge.schema import parse
from edgeforge.training import TrainContext

from tiny_models import make_patterns, train_teacher

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line_naming_the_key_and_fix(device: str, make_config,  # type: ignore[no-untyped-def]
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["build", str(make_config()), "--set", f"train.device={device}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"edgeforge: error: train.device: {device} is not available on this host")
    assert "set train.device: cpu (or auto)" in err[0]


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected


def test_mps_under_torchrun_and_fp16_on_cpu_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.device: mps trains in one process only; run edgeforge without"):
        resolve_device("mps", local_rank=1)
    from edgeforge.devices import check_precision

    with pytest.raises(ConfigError, match=r"train.precision: fp16 autocast needs a GPU.*; use bf16 on the CPU"):
        check_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize(("train", "match"), [({"device": "gpu"}, "train.device"), ({"precision": "int8"}, "precision"),
                                              ({"devices": "cpu"}, "devices")])
def test_bad_train_keys_are_rejected(train: dict[str, str], match: str) -> None:
    raw = {"name": "x", "teacher": {"factory": "a:b"}, "data": {"train": "a", "val": "b", "test": "c"},
           "targets": ["onnx-cpu-fp32"], "train": train}
    with pytest.raises(ConfigError, match=match):
        parse(BuildConfig, raw, "edgeforge.yaml")


def _tiny_data() -> DataBundle:
    splits = [Split(n, *(torch.from_numpy(a) for a in make_patterns(k, seed))) for n, k, seed in
              (("train", 256, 0), ("val", 128, 1), ("test", 64, 2))]
    return DataBundle(*splits, num_classes=4, class_names=list("abcd"))


def test_bf16_autocast_distillation_on_cpu() -> None:
    data = _tiny_data()
    teacher = train_teacher(data.train.x.numpy(), data.train.y.numpy(), epochs=4)
    cfg = DistillConfig(epochs=3, batch_size=32, lr=0.01, temperature=3.0, alpha=0.7)
    seen: list[torch.dtype] = []
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        student = STUDENTS.get("convnet")(1, 4, width=8, depth=1)
        hook = student.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        out = distill(teacher, student, data, cfg, augmented=False, show_progress=False,
                      ctx=TrainContext(Compute(torch.device("cpu"), precision)))
        hook.remove()
        results[precision] = out
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in out.student.parameters())
    assert torch.bfloat16 in seen and torch.float32 in seen  # the bf16 run's forwards ran in bf16
    assert results["bf16"].result.best_val_top1 >= 0.9
    fp32, bf16 = (dict(results[p].student.state_dict()) for p in ("fp32", "bf16"))
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)


def test_manifest_records_device_and_precision(tiny_build) -> None:  # type: ignore[no-untyped-def]
    from edgeforge.records import manifest_json_schema

    _, result = tiny_build
    training = result.manifest["training"]
    assert training == {"device": "cpu", "device_name": "cpu", "precision": "fp32", "qat_precision": "fp32",
                        "processes": 1, "backend": None}
    assert "training" in manifest_json_schema()["properties"]
    assert result.manifest["stages"]["distill"]["resumed_at_epoch"] is None


def test_train_section_defaults(tmp_path: Path) -> None:
    raw = {"name": "x", "teacher": {"factory": "a:b"}, "data": {"train": "a", "val": "b", "test": "c"},
           "targets": ["onnx-cpu-fp32"]}
    cfg = parse(BuildConfig, raw, "edgeforge.yaml")
    assert (cfg.train.device, cfg.train.precision) == ("auto", "fp32")
