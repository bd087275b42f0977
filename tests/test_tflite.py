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
from edgeforge.config import QatConfig  # noqa: E402
from edgeforge.data import DataBundle, Split  # noqa: E402
from edgeforge.errors import ExportError  # noqa: E402
from edgeforge.exporters import get_exporter  # noqa: E402
from edgeforge.exporters.tflite import unfold_quantized_weights  # noqa: E402
from edgeforge.models.students import STUDENTS  # noqa: E402
from edgeforge.quant.qat import load_carrier, quantization_aware_training, save_carrier  # noqa: E402
from edgeforge.runtimes import get_runtime  # noqa: E402
from edgeforge.targets import TargetProfile  # noqa: E402

from tiny_models import fit_classifier  # noqa: E402


def _digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.45, stratify=y, random_state=0)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=2 / 3, stratify=y_rest, random_state=0)
    return {n: (torch.from_numpy(a), torch.from_numpy(b))
            for n, a, b in (("train", x_tr, y_tr), ("val", x_val, y_val), ("test", x_te, y_te))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    splits = _digits()
    data = DataBundle(*(Split(n, x, y) for n, (x, y) in splits.items()), num_classes=10,
                      class_names=[str(i) for i in range(10)])
    student = STUDENTS.get("convnet")(1, 10, width=8, depth=2)  # ~3.3 k parameters
    fit_classifier(student, data.train.x, data.train.y, epochs=6, lr=5e-3, batch_size=64, shuffle=True)
    out = quantization_aware_training(student, None, data, data.train, QatConfig(epochs=1, lr=5e-4),
                                      temperature=3.0, alpha=0.0, show_progress=False)
    # Round trip as the pipeline does: the reloaded carrier holds folded int8 weights.
    path = tmp_path_factory.mktemp("carrier") / "qat.pt2"
    save_carrier(out.converted, data.train.x, str(path))
    quantized = load_carrier(str(path))
    carrier = Carrier(student, quantized, (1, 8, 8), 10, data.class_names, data.train.x[:64], name="digits")
    x_test = data.test.x
    with torch.no_grad():
        ref_float = student(x_test).numpy()
        ref_qat = quantized(x_test).numpy()
    return {"carrier": carrier, "x": x_test.numpy(), "y": data.test.y.numpy(),
            "float": ref_float, "qat": ref_qat, "dir": tmp_path_factory.mktemp("tflite")}


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
    fp32_size = (setup["dir"] / "fp32-NCHW.tflite")
    if fp32_size.exists():
        assert art.path.stat().st_size < fp32_size.stat().st_size


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


def test_runtime_available() -> None:
    assert get_runtime("tflite").unavailable_reason() is None
