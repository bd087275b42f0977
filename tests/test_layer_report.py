"""The layer report names the layer whose scale is wrong, per format, and flags nothing in a clean artifact.

The digits carrier (conftest) is exported to ONNX int8 and TFLite int8; one conv's weight scale
is then multiplied by 1.5 in the written file (a DequantizeLinear scale initializer in the .onnx,
the weight tensor's quantization scale in the .tflite flatbuffer), and the report must name that
conv's module as the first divergent node.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

from edgeforge.debug import layer_report  # noqa: E402
from edgeforge.debug.in_build import first_divergent  # noqa: E402
from edgeforge.exporters import get_exporter  # noqa: E402
from edgeforge.targets import TargetProfile  # noqa: E402

PLANTED = "features.0.0"  # the second conv of the digits student (stem.0, features.0.0, features.1.0, classifier)
SAMPLES = 24


def _profile(fmt: str) -> TargetProfile:
    spec: dict[str, Any] = {"name": f"{fmt}-int8", "format": fmt, "precision": "int8",
                            "input": {"layout": "NCHW", "dtype": "float32", "batch": 1 if fmt == "tflite" else "dynamic"},
                            "runtime": {"threads": 1}}
    return TargetProfile.model_validate(spec)


@pytest.fixture(scope="module")
def exported(digits_carrier: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"dir": tmp_path_factory.mktemp("layer_report"), "x": digits_carrier["x"][:SAMPLES],
            "carrier": digits_carrier["carrier"]}


def _export(exported: dict[str, Any], fmt: str) -> Path:
    path = exported["dir"] / f"model.{fmt}"
    if not path.exists():
        get_exporter(fmt).export(exported["carrier"], _profile(fmt), path)
    return path


def _plant_onnx(src: Path, dst: Path, module: str) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    conv = next(n for n in g.node if n.op_type == "Conv" and any(module in i for i in n.input))
    dq = producers[conv.input[1]]  # the weight's DequantizeLinear
    init = next(i for i in g.initializer if i.name == dq.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
    onnx.save(model, str(dst))


def _plant_tflite(src: Path, dst: Path, conv_index: int) -> None:
    from edgeforge.exporters.tflite import _read_model, _write_model

    model = _read_model(src.read_bytes())
    sg = model.subgraphs[0]
    codes = [max(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in model.operatorCodes]
    convs = [op for op in sg.operators if codes[op.opcodeIndex] in (3, 4)]  # CONV_2D, DEPTHWISE_CONV_2D
    weight = sg.tensors[convs[conv_index].inputs[1]]
    weight.quantization.scale = [s * 1.5 for s in weight.quantization.scale]
    dst.write_bytes(_write_model(model))


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.onnx),
                                 pytest.param("tflite", marks=pytest.mark.tflite)])
def test_clean_artifact_flags_nothing(exported: dict[str, Any], fmt: str) -> None:
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "litert_torch")
    report = layer_report(exported["carrier"].quantized, _export(exported, fmt), _profile(fmt), exported["x"])
    assert [r.module for r in report.rows] == ["input", "stem.0", PLANTED, "features.1.0", "", "classifier"]
    assert all(r.tensor is not None for r in report.rows), report.to_text()
    assert report.first_divergent is None, report.to_text()
    assert "no node diverges" in report.to_text()


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.onnx),
                                 pytest.param("tflite", marks=pytest.mark.tflite)])
def test_planted_scale_is_named(exported: dict[str, Any], fmt: str) -> None:
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "litert_torch")
    src = _export(exported, fmt)
    bad = exported["dir"] / f"planted.{fmt}"
    if fmt == "onnx":
        _plant_onnx(src, bad, PLANTED)
    else:
        _plant_tflite(src, bad, 1)
    report = layer_report(exported["carrier"].quantized, bad, _profile(fmt), exported["x"])
    first = report.first_divergent
    assert first is not None and first.module == PLANTED, report.to_text()
    assert [r.diverged for r in report.rows[:2]] == [False, False]
    assert f"first divergent node: {first.node} ({PLANTED}, conv2d+relu)" in report.to_text()
    assert '"first_divergent": "' + first.node + '"' in report.to_json()


@pytest.mark.onnx
def test_build_verdict_names_node_or_records_failure(exported: dict[str, Any], tmp_path: Path) -> None:
    """What validate stores in the manifest: the node from the saved carrier file, or why the report failed."""
    pytest.importorskip("onnxruntime")
    from edgeforge.quant.qat import save_carrier

    carrier_file = tmp_path / "student_qat.pt2"
    save_carrier(exported["carrier"].quantized, exported["carrier"].example(2), str(carrier_file))
    art = tmp_path / "model.onnx"
    _plant_onnx(_export(exported, "onnx"), art, PLANTED)
    verdict = first_divergent(carrier_file, art, _profile("onnx"), exported["x"])
    assert (verdict.module, verdict.op) == (PLANTED, "conv2d+relu") and "LSB" in verdict.metric
    clean = tmp_path / "clean.onnx"
    shutil.copyfile(_export(exported, "onnx"), clean)
    assert first_divergent(carrier_file, clean, _profile("onnx"), exported["x"]).node is None
    failed = first_divergent(tmp_path / "missing.pt2", art, _profile("onnx"), exported["x"])
    assert failed.node is None and failed.metric.startswith("layer report failed: ")


def test_first_divergent_in_manifest_schema_and_record() -> None:
    from dataclasses import asdict

    from edgeforge.records import FirstDivergent, Metrics, manifest_json_schema
    from edgeforge.target_stages import metrics_from

    props = manifest_json_schema()["$defs"]["Metrics"]["properties"]
    assert props["first_divergent"]["anyOf"][0] == {"$ref": "#/$defs/FirstDivergent"}
    m = Metrics("top1", 0.9, [0.9], 0.99, "QAT simulation", 0.9, -0.6, 0.0, 0.99, 0.1, 0.01, 1000, 10.0,
                first_divergent=FirstDivergent("quantize_per_tensor_2", PLANTED, "conv2d+relu", "SQNR 5.4 dB"))
    back = metrics_from({"metrics": asdict(m)})
    assert back.first_divergent == m.first_divergent
