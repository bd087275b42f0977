"""The layer report names the layer whose scale is wrong, per format, and flags nothing in a clean artifact.

The digits carrier (conftest) is exported to ONNX int8, TFLite int8 and a Core ML W8A8 program; one
conv's weight scale is then multiplied by 1.5 in the written file (a DequantizeLinear scale
initializer in the .onnx, the weight tensor's quantization scale in the .tflite flatbuffer, the
constexpr_affine_dequantize scale in the .mlpackage's weight.bin), and the report must name that
conv's module as the first divergent node. ExecuTorch has no probe: the report says so.
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
    batch = "dynamic" if fmt in ("onnx", "executorch") else 1  # Core ML and TFLite files have a static batch
    spec: dict[str, Any] = {"name": f"{fmt}-int8", "format": fmt, "precision": "int8",
                            "input": {"layout": "NCHW", "dtype": "float32", "batch": batch},
                            "runtime": {"threads": 1}}
    return TargetProfile.model_validate(spec)


@pytest.fixture(scope="module")
def exported(digits_carrier: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"dir": tmp_path_factory.mktemp("layer_report"), "x": digits_carrier["x"][:SAMPLES],
            "carrier": digits_carrier["carrier"]}


SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}
FORMATS = [pytest.param("onnx", marks=pytest.mark.onnx), pytest.param("tflite", marks=pytest.mark.tflite),
           pytest.param("coreml", marks=pytest.mark.coreml)]
NEEDS = {"onnx": "onnxruntime", "tflite": "litert_torch", "coreml": "coremltools"}


def _export(exported: dict[str, Any], fmt: str) -> Path:
    path = exported["dir"] / f"model{SUFFIX[fmt]}"
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


def _plant_coreml(src: Path, dst: Path, conv_index: int) -> None:
    """The conv's weight scale (an fp16 blob in weight.bin: 64-byte header, then the data) times 1.5."""
    import struct

    from coremltools.proto import Model_pb2

    from edgeforge.coreml.program import model_dir_of

    shutil.copytree(src, dst)
    spec_path, model_dir = model_dir_of(dst)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    weight = [o for o in ops if o.type == "conv"][conv_index].inputs["weight"].arguments[0].name
    dequantize = next(o for o in ops if o.outputs[0].name == weight)
    scale = dequantize.attributes["scale"]
    assert scale.WhichOneof("value") == "blobFileValue", "the planted scale is expected in weight.bin"
    blob = model_dir / "weights" / "weight.bin"
    raw = bytearray(blob.read_bytes())
    sentinel, _, size, offset = struct.unpack_from("<IIQQ", raw, scale.blobFileValue.offset)
    assert sentinel == 0xDEADBEEF
    values = np.frombuffer(bytes(raw[offset:offset + size]), np.float16) * np.float16(1.5)
    raw[offset:offset + size] = values.astype(np.float16).tobytes()
    blob.write_bytes(bytes(raw))


@pytest.mark.parametrize("fmt", FORMATS)
def test_clean_artifact_flags_nothing(exported: dict[str, Any], fmt: str) -> None:
    pytest.importorskip(NEEDS[fmt])
    report = layer_report(exported["carrier"].quantized, _export(exported, fmt), _profile(fmt), exported["x"])
    assert [r.module for r in report.rows] == ["input", "stem.0", PLANTED, "features.1.0", "", "classifier"]
    assert all(r.tensor is not None for r in report.rows), report.to_text()
    assert report.first_divergent is None, report.to_text()
    assert "no node diverges" in report.to_text()


@pytest.mark.parametrize("fmt", FORMATS)
def test_planted_scale_is_named(exported: dict[str, Any], fmt: str) -> None:
    pytest.importorskip(NEEDS[fmt])
    src = _export(exported, fmt)
    bad = exported["dir"] / f"planted{SUFFIX[fmt]}"
    if fmt == "onnx":
        _plant_onnx(src, bad, PLANTED)
    elif fmt == "tflite":
        _plant_tflite(src, bad, 1)
    else:
        _plant_coreml(src, bad, 1)
    report = layer_report(exported["carrier"].quantized, bad, _profile(fmt), exported["x"])
    first = report.first_divergent
    assert first is not None and first.module == PLANTED, report.to_text()
    assert [r.diverged for r in report.rows[:2]] == [False, False]
    if fmt == "coreml":  # each layer is fed the carrier's inputs: only the planted one is off
        assert [r.diverged for r in report.rows] == [False, False, True, False, False, False], report.to_text()
    assert f"first divergent node: {first.node} ({PLANTED}, conv2d+relu)" in report.to_text()
    assert '"first_divergent": "' + first.node + '"' in report.to_json()


PLANT = {"onnx": lambda src, dst: _plant_onnx(src, dst, PLANTED), "coreml": lambda src, dst: _plant_coreml(src, dst, 1)}


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.values[0] in PLANT])
def test_build_verdict_names_node_or_records_failure(exported: dict[str, Any], tmp_path: Path, fmt: str) -> None:
    """What validate stores in the manifest: the node from the saved carrier file, or why the report failed."""
    pytest.importorskip(NEEDS[fmt])
    from edgeforge.quant.qat import save_carrier

    carrier_file = tmp_path / "student_qat.pt2"
    save_carrier(exported["carrier"].quantized, exported["carrier"].example(2), str(carrier_file))
    art = tmp_path / f"model{SUFFIX[fmt]}"
    PLANT[fmt](_export(exported, fmt), art)
    verdict = first_divergent(carrier_file, art, _profile(fmt), exported["x"])
    assert (verdict.module, verdict.op) == (PLANTED, "conv2d+relu") and "LSB" in verdict.metric
    clean = _export(exported, fmt)
    assert first_divergent(carrier_file, clean, _profile(fmt), exported["x"]).node is None
    failed = first_divergent(tmp_path / "missing.pt2", art, _profile(fmt), exported["x"])
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


@pytest.mark.coreml
def test_coreml_tensors_come_from_the_op_mapping(exported: dict[str, Any]) -> None:
    """Each node's tensor is the MIL quantize op coremltools made from it (or from its dequantize user)."""
    pytest.importorskip("coremltools")
    report = layer_report(exported["carrier"].quantized, _export(exported, "coreml"), _profile("coreml"), exported["x"])
    tensors = [r.tensor or "" for r in report.rows]
    assert all(t.startswith("quantize_") for t in tensors) and len(set(tensors)) == len(tensors), tensors
    assert "reference interpreter" in report.kernels
    assert max(r.max_lsb or 0.0 for r in report.rows) <= 2.0, report.to_text()  # fp16 between ops: rounding only


def test_coreml_match_by_name_then_by_position() -> None:
    from edgeforge.debug.carrier_nodes import QuantNode
    from edgeforge.debug.coreml_probe import match_coreml

    nodes = [QuantNode(f"q{i}", f"m{i}", "conv2d", 0.1, 0) for i in range(3)]
    mapped = {"q0": "quantize_3_cast_fp16", "q1": "quantize_4_cast_fp16", "q2": "quantize_5_cast_fp16"}
    converted = ["quantize_3_cast_fp16", "quantize_4_cast_fp16", "quantize_5_cast_fp16"]
    same = match_coreml(nodes, mapped, converted, list(converted))
    assert same == mapped
    renamed = match_coreml(nodes, mapped, converted, ["a", "b", "c"])  # another conversion: same order, new names
    assert renamed == {"q0": "a", "q1": "b", "q2": "c"}
    assert match_coreml(nodes, mapped, converted, ["a", "b"]) == {}  # neither names nor counts agree: nothing


def test_executorch_is_listed_not_probed_with_its_reason(exported: dict[str, Any], tmp_path: Path) -> None:
    from edgeforge.debug.report import NotProbed
    from edgeforge.quant.qat import save_carrier

    with pytest.raises(NotProbed, match="executorch: not probed: the XNNPACK delegate"):
        layer_report(exported["carrier"].quantized, tmp_path / "model.pte", _profile("executorch"), exported["x"])
    carrier_file = tmp_path / "student_qat.pt2"
    save_carrier(exported["carrier"].quantized, exported["carrier"].example(2), str(carrier_file))
    verdict = first_divergent(carrier_file, tmp_path / "model.pte", _profile("executorch"), exported["x"])
    assert verdict.node is None and verdict.metric.startswith("not probed: the XNNPACK delegate"), verdict.metric
