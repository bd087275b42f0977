"""TFLite (LiteRT): litert-torch export from the float student and the int8 QAT carrier, run in ai-edge-litert.

One tiny CNN on scikit-learn's digits, a brief float fit, one QAT epoch with edgeforge's own
Int8Quantizer, the carrier saved and reloaded as the pipeline does (folded int8 weights). Every
artifact is checked by running it through the runtime adapter (float32 NCHW in, float32 logits out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert.interpreter")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.tflite

from edgeforge.carrier import Carrier  # noqa: E402
from edgeforge.errors import ExportError  # noqa: E402
from edgeforge.exporters import get_exporter  # noqa: E402
from edgeforge.exporters.tflite import unfold_quantized_weights  # noqa: E402
from edgeforge.runtimes import get_runtime  # noqa: E402
from edgeforge.targets import TargetProfile  # noqa: E402


@pytest.fixture(scope="module")
def setup(digits_carrier: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {**digits_carrier, "dir": tmp_path_factory.mktemp("tflite")}


def _profile(name: str, precision: str, layout: str = "NCHW", dtype: str = "float32",
             out_dtype: str = "float32", batch: Any = 1) -> TargetProfile:
    return TargetProfile.model_validate({
        "name": name, "format": "tflite", "precision": precision,
        "input": {"layout": layout, "dtype": dtype, "batch": batch},
        "runtime": {"threads": 2}, "tflite": {"output_dtype": out_dtype},
    })


def _export_and_run(setup: dict[str, Any], target: TargetProfile) -> tuple[Any, Any, np.ndarray]:
    art = get_exporter("tflite").export(setup["carrier"], target, setup["dir"] / f"{target.name}.tflite")
    session = get_runtime("tflite").open(art.path, target)
    return art, session, session.run_all(setup["x"])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fp32_parity(setup: dict[str, Any], layout: str) -> None:
    art, session, logits = _export_and_run(setup, _profile(f"fp32-{layout}", "fp32", layout))
    assert session.fixed_batch == 1
    shape = art.info["inputs"][0]["shape"]
    assert shape == ([1, 1, 8, 8] if layout == "NCHW" else [1, 8, 8, 1])
    assert art.info["inputs"][0]["dtype"] == art.info["outputs"][0]["dtype"] == "float32"
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(art.info["ops"])
    assert float(np.abs(logits - setup["float"]).max()) <= 1e-4


def test_fp16_weights(setup: dict[str, Any]) -> None:
    art, _, logits = _export_and_run(setup, _profile("fp16", "fp16"))
    assert art.info["constant_tensor_types"].get("float16", 0) >= 3  # conv and linear weights
    assert "float16 -> float32" in art.info["ops"]["DEQUANTIZE"]["types"]
    ref = setup["float"]
    assert float(np.abs(logits - ref).max()) <= 1e-2 * max(1.0, float(np.abs(ref).max()))
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.99
    fp32, _, _ = _export_and_run(setup, _profile("fp32-for-size", "fp32"))
    n_params = sum(p.numel() for p in setup["carrier"].float_model.parameters())
    saved = fp32.path.stat().st_size - art.path.stat().st_size
    assert saved >= 1.5 * n_params, f"fp16 weights save ~2 bytes per parameter, saved {saved} for {n_params}"


def _check_full_int8(info: dict[str, Any]) -> None:
    assert info["float_ops"] == [] and info["full_integer"]
    for op in ("CONV_2D", "FULLY_CONNECTED", "MEAN"):
        for sig in info["ops"][op]["types"]:
            ins, outs = sig.split(" -> ")
            assert ins.split(",")[0] == "int8" and outs == "int8", (op, sig)
    assert "float32" not in info["constant_tensor_types"]


def test_int8_float_io_nhwc(setup: dict[str, Any]) -> None:
    art, _, logits = _export_and_run(setup, _profile("int8", "int8", "NHWC"))
    info = art.info
    _check_full_int8(info)
    assert info["inputs"][0]["dtype"] == info["outputs"][0]["dtype"] == "float32"
    assert info["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert len(info["io_converters"]) == 2
    agreement = (logits.argmax(1) == setup["qat"].argmax(1)).mean()
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_int8_quantized_io_nhwc(setup: dict[str, Any], dtype: str) -> None:
    art, session, logits = _export_and_run(setup, _profile(f"int8-io-{dtype}", "int8", "NHWC", dtype, dtype))
    info = art.info
    _check_full_int8(info)
    for t in (info["inputs"][0], info["outputs"][0]):
        assert t["dtype"] == dtype and t["scale"] > 0 and t["zero_point"] is not None
    assert info["inputs"][0]["shape"] == [1, 8, 8, 1]
    if dtype == "int8":
        assert info["io_converters"] == []
    agreement = (logits.argmax(1) == setup["qat"].argmax(1)).mean()
    assert agreement >= 0.99, agreement
    # Dequantized logits lie within a few output quanta of the QAT simulation.
    assert float(np.abs(logits - setup["qat"]).max()) <= 4 * info["outputs"][0]["scale"] + 1e-6


def test_dynamic_batch_fp32(setup: dict[str, Any]) -> None:
    art, session, logits = _export_and_run(setup, _profile("fp32-dyn", "fp32", batch="dynamic"))
    assert session.fixed_batch is None and art.info["inputs"][0]["shape"][0] == -1
    out = session.run(setup["x"][:7])
    assert out.shape == (7, 10)
    assert float(np.abs(out - setup["float"][:7]).max()) <= 1e-4


def test_dynamic_batch_failure_is_explained(setup: dict[str, Any], tmp_path: Path) -> None:
    # torch.flatten with a symbolic batch is what litert-torch cannot lower.
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()
    carrier = Carrier(m, None, (1, 8, 8), 10, list("0123456789"), torch.zeros(4, 1, 8, 8))
    with pytest.raises(ExportError, match="dynamic batch.*input.batch"):
        get_exporter("tflite").export(carrier, _profile("flat-dyn", "fp32", batch="dynamic"), tmp_path / "m.tflite")


def test_quantized_io_needs_int8(setup: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="needs precision int8"):
        get_exporter("tflite").export(setup["carrier"], _profile("bad", "fp32", dtype="int8"), tmp_path / "m.tflite")


def test_unfold_keeps_the_carrier_numbers(setup: dict[str, Any]) -> None:
    q = setup["carrier"].quantized
    unfolded = unfold_quantized_weights(q)
    qd = torch.ops.quantized_decomposed
    targets = [n.target for n in unfolded.graph.nodes if n.op == "call_function"]
    assert qd.quantize_per_channel.default in targets
    x = torch.from_numpy(setup["x"][:64])
    with torch.no_grad():
        assert torch.equal(unfolded(x), q(x))

