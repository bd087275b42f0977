"""ExecuTorch (.pte): XNNPACK lowering of the float student and the int8 QAT carrier, run in executorch.runtime.

One tiny convnet on the bar patterns of tiny_models, a brief float fit, one QAT epoch with
edgeforge's Int8Quantizer, the carrier saved and reloaded as the pipeline does. Each artifact is
run through the runtime adapter (float32 NCHW in, float32 logits out) and compared with PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime", reason="needs ExecuTorch: pip install 'edgeforge[executorch]'")
pytestmark = pytest.mark.executorch

from edgeforge.carrier import Carrier  # noqa: E402
from edgeforge.config import QatConfig  # noqa: E402
from edgeforge.data import DataBundle, Split  # noqa: E402
from edgeforge.errors import EdgeforgeError, ExportError  # noqa: E402
from edgeforge.exporters import executorch as et_exporter  # noqa: E402
from edgeforge.exporters import get_exporter  # noqa: E402
from edgeforge.models.students import STUDENTS  # noqa: E402
from edgeforge.quant.qat import load_carrier, quantization_aware_training, save_carrier  # noqa: E402
from edgeforge.remote.adb import AdbDevice, parse_executor_runner_output, runner_latency  # noqa: E402
from edgeforge.runtimes import get_runtime  # noqa: E402
from edgeforge.targets import TargetProfile  # noqa: E402

from tiny_models import fit_classifier, make_patterns  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    splits = {n: make_patterns(k, s) for n, k, s in (("train", 384, 0), ("val", 128, 1), ("test", 203, 2))}
    data = DataBundle(*(Split(n, torch.from_numpy(x), torch.from_numpy(y)) for n, (x, y) in splits.items()),
                      num_classes=4, class_names=list("abcd"))
    student = STUDENTS.get("convnet")(1, 4, width=8, depth=2)
    fit_classifier(student, data.train.x, data.train.y, epochs=3, lr=1e-2, batch_size=64, shuffle=False)
    out = quantization_aware_training(student, None, data, data.train, QatConfig(epochs=1, lr=1e-3),
                                      temperature=3.0, alpha=0.0, show_progress=False)
    path = tmp_path_factory.mktemp("carrier") / "qat.pt2"
    save_carrier(out.converted, data.train.x, str(path))
    quantized = load_carrier(str(path))  # folded int8 weights, as the pipeline's carrier
    carrier = Carrier(student, quantized, (1, 8, 8), 4, data.class_names, data.train.x[:64], name="bars")
    x = data.test.x
    with torch.no_grad():
        ref_float, ref_qat = student(x).numpy(), quantized(x).numpy()
    return {"carrier": carrier, "x": x.numpy(), "y": data.test.y.numpy(), "float": ref_float, "qat": ref_qat,
            "dir": tmp_path_factory.mktemp("pte")}


def _profile(name: str, precision: str, batch: Any = 1, **options: Any) -> TargetProfile:
    data: dict[str, Any] = {"name": name, "format": "executorch", "precision": precision,
                            "input": {"batch": batch}, "runtime": {"threads": 2}}
    if options:
        data["executorch"] = options
    return TargetProfile.model_validate(data)


def _export_and_run(setup: dict[str, Any], target: TargetProfile) -> tuple[Any, Any, np.ndarray]:
    art = get_exporter("executorch").export(setup["carrier"], target, setup["dir"] / f"{target.name}.pte")
    session = get_runtime("executorch").open(art.path, target)
    return art, session, session.run_all(setup["x"])


@pytest.fixture(scope="module")
def fp32(setup: dict[str, Any]) -> tuple[Any, Any, np.ndarray]:
    # batch 4 and 203 test images: the last chunk of 3 is padded by run_all
    return _export_and_run(setup, _profile("et-fp32", "fp32", batch=4))


@pytest.fixture(scope="module")
def int8(setup: dict[str, Any]) -> tuple[Any, Any, np.ndarray]:
    return _export_and_run(setup, _profile("et-int8", "int8"))


def test_fp32_parity_with_fixed_batch_padding(setup: dict[str, Any], fp32: tuple[Any, Any, np.ndarray]) -> None:
    art, session, logits = fp32
    assert session.fixed_batch == 4 and art.info["input"]["shape"] == [4, 1, 8, 8]
    assert logits.shape == setup["float"].shape == (203, 4)
    assert float(np.abs(logits - setup["float"]).max()) <= 1e-4
    with pytest.raises(ValueError, match=r"shape \[4, 1, 8, 8\]"):
        session.run(setup["x"][:3])
    assert "XnnpackBackend" in session.executor and "2 thread(s)" in session.executor


def test_int8_agrees_with_the_qat_simulation(setup: dict[str, Any], int8: tuple[Any, Any, np.ndarray]) -> None:
    art, session, logits = int8
    sim = setup["qat"]
    agreement = float((logits.argmax(1) == sim.argmax(1)).mean())
    assert agreement >= 0.99, agreement
    # The carrier's last quantize op sets the output step: the program may differ by one LSB of it.
    q = [n for n in setup["carrier"].quantized.graph.nodes if "quantize_per_tensor" in str(n.target)]
    out_scale = float(q[-1].args[1])
    assert float(np.abs(logits - sim).max()) <= out_scale * 1.001 + 1e-6
    assert art.path.stat().st_size < (setup["dir"] / "et-fp32.pte").stat().st_size


def test_delegation_summary_is_complete_for_an_xnnpack_model(int8: tuple[Any, Any, np.ndarray],
                                                            fp32: tuple[Any, Any, np.ndarray]) -> None:
    for art, _, _ in (int8, fp32):
        d = art.info["delegation"]
        assert d["backend"] == "XnnpackBackend" and d["delegated_subgraphs"] == 1
        assert d["portable_nodes"] == 0 and d["portable_ops"] == {}
        assert d["delegated_ops"]["aten.convolution.default"] == 3 and d["delegated_ops"]["aten.linear.default"] == 1
        assert d["delegated_nodes"] == sum(d["delegated_ops"].values())
        assert art.info["rewrites"]["keepdim_global_mean"] == 1
    d8 = int8[0].info["delegation"]["delegated_ops"]
    assert d8["quantized_decomposed.dequantize_per_channel.default"] == 4  # 3 conv + 1 linear weights
    assert int8[0].info["float_islands"] == []
    checks = get_exporter("executorch").artifact_checks(int8[0].info, _profile("et-int8", "int8"))
    assert [c.passed for c in checks] == [True]
    graph = get_runtime("executorch").inspect(int8[0].path)  # read back from the file
    assert graph["delegates"] == {"XnnpackBackend": 1} and graph["kernel_calls"] == 0


@pytest.mark.slow  # a third lowering; the default set stays at two
def test_portable_backend_lists_every_op(setup: dict[str, Any], fp32: tuple[Any, Any, np.ndarray]) -> None:
    art, session, logits = _export_and_run(setup, _profile("et-portable", "fp32", backend="portable"))
    d = art.info["delegation"]
    assert d["delegated_nodes"] == 0 and d["delegated_subgraphs"] == 0
    # without a delegate the edge dialect decomposes linear into permute_copy + addmm
    assert d["portable_ops"]["aten.convolution.default"] == 3 and d["portable_ops"]["aten.addmm.default"] == 1
    assert d["portable_nodes"] == sum(d["portable_ops"].values())
    graph = get_runtime("executorch").inspect(art.path)
    assert graph["delegates"] == {} and graph["kernel_calls"] >= 7
    assert any(k.startswith("aten::convolution") for k in graph["portable_kernels"])
    assert float(np.abs(logits - setup["float"]).max()) <= 1e-4
    assert "portable kernels" in session.executor


@pytest.mark.slow
def test_a_pooling_xnnpack_does_not_take_is_a_float_island(setup: dict[str, Any], int8: tuple[Any, Any, np.ndarray],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the keepdim rewrite, x.mean((2, 3)) falls out of XNNPACK and runs in float between delegates.
    monkeypatch.setattr(et_exporter, "keepdim_global_means", lambda gm: 0)
    art, _, logits = _export_and_run(setup, _profile("et-int8-island", "int8"))
    d = art.info["delegation"]
    assert d["portable_ops"] == {"aten.mean.dim": 1} and d["delegated_subgraphs"] == 2
    assert art.info["float_islands"] == ["aten.mean.dim x1"]
    [check] = get_exporter("executorch").artifact_checks(art.info, _profile("et-int8-island", "int8"))
    assert not check.passed and "aten.mean.dim" in check.message and "allow_portable_ops" in check.message
    [allowed] = get_exporter("executorch").artifact_checks(
        art.info, _profile("et-int8-island", "int8", allow_portable_ops=True))
    assert allowed.passed
    assert get_runtime("executorch").inspect(art.path)["portable_kernels"] == {"aten::mean.out": 1}
    assert (logits.argmax(1) == setup["qat"].argmax(1)).mean() >= 0.99


@pytest.mark.parametrize(("precision", "batch", "options", "message"), [
    ("fp16", 1, {}, r"executorch precision 'fp16' is not supported \(supported: fp32, int8\)"),
    ("fp32", "dynamic", {}, r"input\.batch.*set input\.batch to a fixed size"),
    ("int8", 1, {"backend": "portable"}, r"portable backend has no int8 kernels.*executorch\.backend: xnnpack"),
])
def test_bad_targets_are_rejected_in_one_line(setup: dict[str, Any], tmp_path: Path, precision: str, batch: Any,
                                              options: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=message) as err:
        get_exporter("executorch").export(setup["carrier"], _profile("bad", precision, batch, **options),
                                          tmp_path / "m.pte")
    assert "\n" not in str(err.value) and "target bad" in str(err.value)
    assert not (tmp_path / "m.pte").exists()


def test_unknown_option_names_the_key() -> None:
    with pytest.raises(EdgeforgeError, match=r"executorch\.backend.*fix the 'executorch:' section"):
        get_exporter("executorch").check_target(_profile("bad-opt", "fp32", backend="vulkan"))


def test_device_bench_runs_a_pte(fp32: tuple[Any, Any, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    # The script edgeforge copies to an SSH device; run in this process (the SSH transport has its own tests).
    from edgeforge.remote import device_bench

    args = ["--model", str(fp32[0].path), "--format", "executorch", "--threads", "1", "--warmup", "2", "--runs", "5"]
    assert device_bench.main([*args, "--shape", "4,1,8,8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"], out
    assert out["runtime"] == "executorch" and out["input_shape"] == [4, 1, 8, 8] and out["input_dtype"] == "float32"
    assert len(out["samples_ms"]) == 5 and 0 < out["p50_ms"] <= out["p99_ms"]
    assert device_bench.main([*args, "--shape", "1,1,8,8"]) == 2  # the profile and the file disagree
    assert json.loads(capsys.readouterr().out.strip())["error"] == "shape_mismatch"


def test_executor_runner_log_is_parsed() -> None:
    log = "\n".join([
        "I 00:00:00.001 executorch:executor_runner.cpp:200] Resetting threadpool with num threads = 4",
        "I 00:00:00.004 executorch:executor_runner.cpp:410] Model loaded in 2.500000 ms.",
        *[f"I 00:00:00.01{i} executorch:executor_runner.cpp:520] Iteration {i + 1} of 6: {t:.6f} ms"
          for i, t in enumerate([9.0, 5.0, 1.0, 2.0, 3.0, 4.0])],
        "I 00:00:00.020 executorch:executor_runner.cpp:530] Model executed successfully 6 time(s) in 24.000000 ms.",
        "OutputX 0: tensor(sizes=[1, 4], [0.1, 0.2, 0.3, 0.4])",
    ])
    out = parse_executor_runner_output(log, warmup=2)
    assert out.count == 6 and out.load_ms == 2.5 and out.iterations_ms == [1.0, 2.0, 3.0, 4.0]
    lat = runner_latency(out, device=AdbDevice("R58M"), threads=4, warmup=2)
    assert (lat.p50_ms, lat.mean_ms, lat.runs, lat.measured_on) == (2.5, 2.5, 4, "adb:R58M")
    # An older runner prints only the total: the mean then includes the warm-up, and says so.
    old = parse_executor_runner_output(log.splitlines()[-2], warmup=2)
    lat = runner_latency(old, device=AdbDevice("R58M"), threads=4, warmup=2)
    assert lat.p50_ms is None and lat.mean_ms == 4.0 and lat.extra["mean_includes_warmup"]
    with pytest.raises(ValueError, match="Loading of method forward failed"):
        parse_executor_runner_output("E 00:00:00.1 executor_runner.cpp:400] Loading of method forward failed with "
                                     "status 0x20", warmup=0)
