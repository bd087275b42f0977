"""Carriers made by other tools (NNCF's PTQ) go through the same exporters and must be computed exactly.

NNCF's ``quantize_pt2e`` stored the stem convolution's weights with zero point 1 on every channel
(its first-layer overflow fix on a full [-128, 127] grid). onnxruntime subtracted it; LiteRT's and
XNNPACK's int8 convolution kernels ignore weight zero points, so the TFLite file computed another
network (Fashion-MNIST, "w4a8" setting of bench_fashion_ptq.py: 90.39% in ONNX, 86.00% in TFLite).
"""

from __future__ import annotations

import copy
import operator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeforge.carrier import Carrier
from edgeforge.errors import ExportError
from edgeforge.exporters import get_exporter
from edgeforge.quant.weight_codes import symmetric_weights
from edgeforge.runtimes import get_runtime
from edgeforge.targets import resolve


def _stem_dequantize(gm: torch.fx.GraphModule) -> torch.fx.Node:
    qd = torch.ops.quantized_decomposed
    return next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == qd.dequantize_per_channel.default)


def with_weight_zero_point(gm: torch.fx.GraphModule, zero_point: int, *, halve: bool = True,
                           shift: bool = True) -> torch.fx.GraphModule:
    """A copy of ``gm`` whose stem weights are stored as NNCF stores them: codes + z, zero point z.

    ``halve`` puts the codes on half the range (scale doubled) first, as NNCF's overflow fix does;
    without ``shift`` the codes stay and only the zero point changes. The copy is a different
    network from ``gm``: it is the reference its own artifacts must match.
    """
    out = copy.deepcopy(gm)
    dq = _stem_dequantize(out)
    codes_node, scale_node, zp_node = dq.args[:3]
    codes = operator.attrgetter(str(codes_node.target))(out).to(torch.int32)
    scale = operator.attrgetter(str(scale_node.target))(out)
    if halve:
        codes, scale.data = torch.round(codes / 2).to(torch.int32), scale.data * 2
    shifted = codes + zero_point if shift else codes
    assert int(shifted.min()) >= -128 and int(shifted.max()) <= 127
    out.register_buffer("_test_codes", shifted.to(torch.int8))
    out.register_buffer("_test_zero_points", torch.full_like(operator.attrgetter(str(zp_node.target))(out), zero_point))
    with out.graph.inserting_before(dq):
        new_codes, new_zp = out.graph.get_attr("_test_codes"), out.graph.get_attr("_test_zero_points")
    dq.args = (new_codes, scale_node, new_zp, dq.args[3], -128, 127, torch.int8)
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


@pytest.fixture(scope="module")
def foreign(digits_carrier: dict[str, Any]) -> dict[str, Any]:
    gm = with_weight_zero_point(digits_carrier["carrier"].quantized, 24)
    x = torch.from_numpy(digits_carrier["x"])
    with torch.no_grad():
        ref = gm(x).numpy()
    carrier = copy.copy(digits_carrier["carrier"])
    carrier.quantized = gm
    return {"carrier": carrier, "x": digits_carrier["x"], "ref": ref}


def test_the_rewrite_is_exact_and_a_no_op_on_symmetric_carriers(digits_carrier: dict[str, Any],
                                                                foreign: dict[str, Any]) -> None:
    own = digits_carrier["carrier"].quantized
    assert symmetric_weights(own, "t") is own  # edgeforge's carriers are left as they are
    gm = foreign["carrier"].quantized
    rewritten = symmetric_weights(gm, "t")
    assert rewritten is not gm
    zp = operator.attrgetter(str(_stem_dequantize(rewritten).args[2].target))(rewritten)
    assert int(zp.abs().max()) == 0
    x = torch.from_numpy(foreign["x"])
    with torch.no_grad():
        assert torch.equal(rewritten(x), gm(x))


@pytest.mark.parametrize("name", ["tflite-cpu-int8", "executorch-cpu-int8", "onnx-cpu-int8"])
def test_every_runtime_computes_a_carrier_with_weight_zero_points(foreign: dict[str, Any], name: str,
                                                                  tmp_path: Path) -> None:
    (target,) = resolve([name])
    pytest.importorskip({"tflite": "ai_edge_litert", "executorch": "executorch", "onnx": "onnxruntime"}[target.format])
    art = get_exporter(target.format).export(foreign["carrier"], target, tmp_path / f"m.{target.format}")
    logits = get_runtime(target.format).open(art.path, target).run_all(foreign["x"])
    ref = foreign["ref"]
    # Ignoring the zero point moves every stem weight by 24 steps: most predictions change.
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert float(np.abs(logits - ref).max()) <= 0.05 * float(np.abs(ref).max())


def test_codes_outside_int8_are_refused_naming_the_node(digits_carrier: dict[str, Any], tmp_path: Path) -> None:
    gm = with_weight_zero_point(digits_carrier["carrier"].quantized, -100, halve=False, shift=False)
    carrier: Carrier = copy.copy(digits_carrier["carrier"])
    carrier.quantized = gm
    (target,) = resolve(["tflite-cpu-int8"])
    pytest.importorskip("ai_edge_litert")
    with pytest.raises(ExportError, match=r"weight codes minus zero points span \[-?\d+, \d+\], outside int8") as err:
        get_exporter("tflite").export(carrier, target, tmp_path / "m.tflite")
    assert err.value.op == _stem_dequantize(gm).name
    assert not (tmp_path / "m.tflite").exists()


def test_nncf_carrier_in_tflite(digits_carrier: dict[str, Any], tmp_path: Path) -> None:
    """The benchmark's NNCF carrier (w4a8 spec) as NNCF 3.4 builds it: the TFLite file stores zero point 0."""
    nncf = pytest.importorskip("nncf")
    pytest.importorskip("ai_edge_litert")
    from nncf.experimental.torch.fx import quantize_pt2e

    from edgeforge.quant.qat import export_for_training
    from edgeforge.quant.quantizer import Int8Quantizer, Int8Scheme

    base: Carrier = digits_carrier["carrier"]
    calib = base.calibration
    assert isinstance(calib, torch.Tensor)
    gm = export_for_training(copy.deepcopy(base.float_model).eval(), calib)
    gm = quantize_pt2e(gm, Int8Quantizer(Int8Scheme(learn_activation_ranges=False, weight_bits=4)),
                       calibration_dataset=nncf.Dataset([calib]), subset_size=1, fast_bias_correction=None)
    stem = _stem_dequantize(gm)
    # NNCF maps the [-7, 7] weight spec onto its own 8-bit grid (so this is no w4a8 carrier at all).
    assert stem.args[4:6] == (-128, 127)
    if not bool((operator.attrgetter(str(stem.args[2].target))(gm) != 0).any()):
        pytest.skip("this NNCF release stores the stem weights with zero point 0")
    carrier = copy.copy(base)
    carrier.quantized = gm
    (target,) = resolve(["tflite-cpu-int8"])
    art = get_exporter("tflite").export(carrier, target, tmp_path / "m.tflite")
    x = digits_carrier["x"]
    with torch.no_grad():
        ref = gm(torch.from_numpy(x)).numpy()
    logits = get_runtime("tflite").open(art.path, target).run_all(x)
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert _tflite_weight_zero_points(art.path.read_bytes()) == {0}


def _tflite_weight_zero_points(data: bytes) -> set[int]:
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sg = model.subgraphs[0]
    zps: set[int] = set()
    for op in sg.operators:
        t = sg.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if t is not None and t.buffer and model.buffers[t.buffer].data is not None and t.type == 9 and t.quantization:
            zps.update(int(z) for z in t.quantization.zeroPoint)
    return zps
