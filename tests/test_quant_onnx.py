"""The int8 carrier: quantizer annotations, QAT, and its ONNX QDQ export run in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeforge.carrier import Carrier
from edgeforge.config import QatConfig
from edgeforge.data import DataBundle, Split
from edgeforge.models.students import STUDENTS
from edgeforge.quant.qat import load_carrier, quantization_aware_training, save_carrier
from edgeforge.targets import TargetProfile

from tiny_models import fit_classifier, make_patterns, train_teacher

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def qat_setup():  # type: ignore[no-untyped-def]
    splits = {n: make_patterns(k, s) for n, k, s in (("train", 384, 0), ("val", 128, 1), ("test", 256, 2))}
    data = DataBundle(*(Split(n, torch.from_numpy(x), torch.from_numpy(y)) for n, (x, y) in splits.items()),
                      num_classes=4, class_names=list("abcd"))
    teacher = train_teacher(*splits["train"])
    torch.manual_seed(0)
    student = STUDENTS.get("separable")(1, 4, width=8, depth=2)
    # a brief float fit so the QAT starts from a useful student
    fit_classifier(student, data.train.x, data.train.y, epochs=4, lr=1e-2, batch_size=64, shuffle=False)
    out = quantization_aware_training(student, teacher, data, data.train, QatConfig(epochs=2, lr=1e-3),
                                      temperature=3.0, alpha=0.5, show_progress=False)
    return data, student, out


def test_carrier_has_int8_qdq_and_matches_prepared(qat_setup) -> None:  # type: ignore[no-untyped-def]
    data, _, out = qat_setup
    targets = {str(n.target) for n in out.converted.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets)
    assert any("dequantize_per_channel" in t for t in targets)
    assert not any("batch_norm" in t for t in targets), "BN must be folded into the convs"
    # residual add of the separable block and all 6 conv/linear layers are quantized
    assert out.quantized_ops >= 8
    assert out.convert_max_diff < 0.05


def test_carrier_round_trips_through_pt2(qat_setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, _, out = qat_setup
    save_carrier(out.converted, data.train.x, str(tmp_path / "q.pt2"))
    again = load_carrier(str(tmp_path / "q.pt2"))
    x = data.test.x[:17]
    assert torch.allclose(again(x), out.converted(x))


def _target(precision: str, batch: object = "dynamic") -> TargetProfile:
    return TargetProfile.model_validate({"name": f"t-{precision}", "format": "onnx", "precision": precision,
                                         "input": {"batch": batch}})


def test_onnx_int8_runs_in_ort_with_integer_kernels(qat_setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgeforge.exporters import get_exporter
    from edgeforge.runtimes import get_runtime

    data, student, out = qat_setup
    carrier = Carrier(student, out.converted, (1, 8, 8), 4, list("abcd"), data.train.x[:32])
    target = _target("int8")
    art = get_exporter("onnx").export(carrier, target, tmp_path / "m.onnx")
    assert art.info["ops"].get("QuantizeLinear", 0) >= 4 and art.info["int32_biases"] == 6
    runtime = get_runtime("onnx")
    sess = runtime.open(tmp_path / "m.onnx", target)
    got = sess.run_all(data.test.x.numpy(), 100)
    sim = out.converted(data.test.x).detach().numpy()
    agreement = (got.argmax(1) == sim.argmax(1)).mean()
    assert agreement >= 0.99
    fused = runtime.inspect(tmp_path / "m.onnx")["ops_after_fusion"]
    assert fused.get("QLinearConv", 0) >= 3, fused


def test_onnx_fp32_parity_static_batch(qat_setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgeforge.exporters import get_exporter
    from edgeforge.runtimes import get_runtime

    data, student, out = qat_setup
    carrier = Carrier(student, out.converted, (1, 8, 8), 4, list("abcd"), data.train.x[:32])
    target = _target("fp32", batch=4)
    get_exporter("onnx").export(carrier, target, tmp_path / "f.onnx")
    sess = get_runtime("onnx").open(tmp_path / "f.onnx", target)
    assert sess.fixed_batch == 4
    x = data.test.x[:10].numpy()  # not a multiple of 4: the session pads the last batch
    got = sess.run_all(x)
    with torch.no_grad():
        ref = student(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4


def test_onnx_fp16_runs_half_compute_within_fp16_tolerance(qat_setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    from edgeforge.exporters import get_exporter
    from edgeforge.runtimes import get_runtime

    data, student, out = qat_setup
    carrier = Carrier(student, out.converted, (1, 8, 8), 4, list("abcd"), data.train.x[:32])
    target = _target("fp16", batch=1)
    get_exporter("onnx").export(carrier, target, tmp_path / "h.onnx")
    weights = [i for i in onnx.load(str(tmp_path / "h.onnx")).graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    x = data.test.x[:16].numpy()
    got = get_runtime("onnx").open(tmp_path / "h.onnx", target).run_all(x)
    with torch.no_grad():
        ref = student(torch.from_numpy(x)).numpy()
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 2e-2 * max(1.0, float(np.abs(ref).max()))
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert not np.array_equal(got, ref)  # it really computed in half precision


def test_zero_qat_epochs_is_post_training_quantization(qat_setup) -> None:  # type: ignore[no-untyped-def]
    data, student, _ = qat_setup
    out = quantization_aware_training(student, None, data, data.train, QatConfig(epochs=0),
                                      temperature=3.0, alpha=0.5, show_progress=False)
    assert out.result.best_epoch == 0 and out.result.history == []
    x = data.test.x
    with torch.no_grad():
        agree = (out.converted(x).argmax(1) == student(x).argmax(1)).float().mean().item()
    assert agree >= 0.9  # calibrated int8 follows the float student without any fine-tuning
