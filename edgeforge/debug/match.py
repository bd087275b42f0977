"""Which tensor of an artifact holds each quantized carrier node.

ONNX: torch.onnx names every value after the FX node that made it, and those names survive
``strip_debug_info`` (which drops the module-scope metadata, not the names), so a carrier
quantize node and the QuantizeLinear output of the same name are the same tensor; the module
comes from the carrier's own ``nn_module_stack``. When the names differ (a re-export renamed
them) the activation QuantizeLinear ops are paired in graph order, if there are as many.

TFLite: litert-torch names tensors after its wrapper module, so they are paired by structure:
in execution order, the next op output with the node's scale, zero point and per-sample size
(layout ops such as PAD, RESHAPE and TRANSPOSE only move codes and are skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .carrier_nodes import QuantNode


@dataclass(frozen=True)
class Tensor:
    name: str
    key: int | str  # the runtime's handle: a TFLite tensor index or an ONNX value name
    scale: float
    zero_point: int


def _onnx_const(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return np.asarray(numpy_helper.to_array(init))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return np.asarray(numpy_helper.to_array(node.attribute[0].t))
    return None


def match_onnx(nodes: list[QuantNode], model: Any) -> dict[str, Tensor]:
    inits = {i.name for i in model.graph.initializer}
    quants = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    by_name = {q.output[0]: q for q in quants}
    if all(n.name in by_name for n in nodes):
        pairs = [(n, by_name[n.name]) for n in nodes]
    elif len(quants) == len(nodes):
        pairs = list(zip(nodes, quants, strict=True))
    else:
        pairs = [(n, by_name[n.name]) for n in nodes if n.name in by_name]
    out = {}
    for n, q in pairs:
        scale = _onnx_const(model, q.input[1])
        zp = _onnx_const(model, q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros(1, np.int64)
        if scale is None or zp is None or scale.size != 1:
            continue
        out[n.name] = Tensor(q.output[0], q.output[0], float(scale.reshape(())), int(zp.reshape(())))
    return out


_LAYOUT_OPS = {"PAD", "PADV2", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "DEQUANTIZE"}


def _tflite_candidates(details: list[dict[str, Any]], ops: list[dict[str, Any]], inputs: list[int]) -> list[Tensor]:
    """Per-tensor quantized tensors made by ops, in execution order (graph inputs first)."""
    by_index = {d["index"]: d for d in details}
    order = list(inputs) + [o for op in ops if op["op_name"] not in _LAYOUT_OPS for o in op["outputs"]]
    out = []
    for idx in order:
        d = by_index.get(int(idx))
        if d is None:
            continue
        q = d["quantization_parameters"]
        if len(q["scales"]) != 1 or not np.issubdtype(d["dtype"], np.integer):
            continue
        out.append(Tensor(d["name"], int(idx), float(q["scales"][0]), int(q["zero_points"][0])))
    return out


def match_tflite(nodes: list[QuantNode], sizes: dict[str, int], details: list[dict[str, Any]],
                 ops: list[dict[str, Any]], inputs: list[int]) -> dict[str, Tensor]:
    """``sizes``: each carrier node's values per sample; tensor sizes come from ``details``' shapes."""
    per_sample = {d["index"]: int(np.prod(d["shape"][1:])) for d in details if len(d["shape"])}
    cands = _tflite_candidates(details, ops, inputs)
    out: dict[str, Tensor] = {}
    pos = 0
    for n in nodes:
        for j in range(pos, len(cands)):
            c = cands[j]
            if (c.zero_point == n.zero_point and math_close(c.scale, n.scale)
                    and per_sample.get(int(c.key)) == sizes[n.name]):
                out[n.name] = c
                pos = j + 1
                break
    return out


def math_close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))
