"""Hardswish for int8: one HARD_SWISH op by default, or int8 parts XNNPACK takes (Int8Scheme.decompose_hardswish)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

aten = torch.ops.aten


class ConvHardswish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.conv(x)).mean((2, 3)))


def _carrier(decompose: bool) -> tuple[nn.Module, torch.fx.GraphModule, torch.Tensor]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeforge.quant.qat import export_for_training
    from edgeforge.quant.quantizer import Int8Quantizer, Int8Scheme

    torch.manual_seed(0)
    model = ConvHardswish().eval()
    x = torch.randn(16, 3, 12, 12) * 2
    scheme = Int8Scheme(learn_activation_ranges=False, decompose_hardswish=decompose)
    prepared = prepare_pt2e(export_for_training(model, x), Int8Quantizer(scheme))
    with torch.no_grad():
        prepared(x)
    return model, convert_pt2e(prepared), x


def _is_quantize(node: Any) -> bool:
    return "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target)


def test_default_keeps_one_hardswish_op() -> None:
    _, gm, _ = _carrier(False)
    assert sum(n.target == aten.hardswish.default for n in gm.graph.nodes) == 1


def test_decomposed_hardswish_is_quantized_part_by_part() -> None:
    model, gm, x = _carrier(True)
    assert not any(n.target == aten.hardswish.default for n in gm.graph.nodes)
    parts = [n for n in gm.graph.nodes if n.meta.get("edgeforge_decomposed_from") == "hardswish"]
    assert sorted(str(n.target) for n in parts) == ["aten.add.Tensor", "aten.hardtanh.default",
                                                    "aten.mul.Tensor", "aten.mul.Tensor"]
    # +3 fuses with its clamp; the clamp, the x 1/6 and the product each end on their own int8 tensor.
    for n in parts:
        if n.target != aten.add.Tensor:
            assert all(_is_quantize(u) for u in n.users), (n.name, list(n.users))
    with torch.no_grad():
        ref, got = model(x), gm(x)
    cosine = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
    assert cosine > 0.999


def _tflite(gm: torch.fx.GraphModule, model: nn.Module, folder: Path) -> tuple[Path, dict[str, Any]]:
    from edgeforge.carrier import Carrier
    from edgeforge.exporters import get_exporter
    from edgeforge.targets import resolve

    carrier = Carrier(float_model=model, quantized=gm, input_shape=(3, 12, 12), num_classes=4,
                      class_names=list("abcd"), calibration=torch.zeros(1, 3, 12, 12), name="hardswish")
    (target,) = resolve(["tflite-cpu-int8"])
    folder.mkdir(parents=True, exist_ok=True)
    art = get_exporter("tflite").export(carrier, target, folder / "model.tflite")
    return art.path, art.info


def _delegated(path: Path) -> list[str]:
    """The execution plan's node names: the file's ops, then one DELEGATE node per XNNPACK partition."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return [o["op_name"] for o in it._get_ops_details()]


@pytest.mark.slow
@pytest.mark.tflite
def test_litert_runs_decomposed_hardswish_in_one_xnnpack_partition(tmp_path: Path) -> None:
    """LiteRT 2.3's XNNPACK delegate leaves an int8 HARD_SWISH to the builtin kernel and splits the
    graph around it; the decomposed parts (ADD + RELU6, MUL, MUL) all go to one XNNPACK partition,
    and the file still computes the carrier (within one output LSB)."""
    pytest.importorskip("litert_torch")
    from edgeforge.runtimes import get_runtime
    from edgeforge.targets import resolve

    model, native, x = _carrier(False)
    native_path, _ = _tflite(native, model, tmp_path / "native")
    plan = _delegated(native_path)
    assert "HARD_SWISH" in plan and plan.count("DELEGATE") >= 2, plan

    model, gm, x = _carrier(True)
    path, info = _tflite(gm, model, tmp_path / "decomposed")
    assert "HARD_SWISH" not in info["ops"] and info["float_ops"] == []
    plan = _delegated(path)
    assert plan.count("DELEGATE") == 1 and "HARD_SWISH" not in plan, plan
    (target,) = resolve(["tflite-cpu-int8"])
    session = get_runtime("tflite").open(path, target)
    got = np.concatenate([session.run(x[i : i + 1].numpy()) for i in range(len(x))])
    with torch.no_grad():
        ref = gm(x).numpy()
    out_scale = float(next(n for n in reversed(gm.graph.nodes) if "dequantize_per_tensor" in str(n.target)).args[1])
    assert np.abs(got - ref).max() <= out_scale * 1.001
