"""Check that an int8 artifact holds float the layers its carrier holds float (qat.float_modules, qat.fallback).

Each format is read back from its written file (ExecuTorch from the program as lowered): for every
conv/linear op, whether its weight is dequantized from int8 or stored float, and which student
module it came from (by the carrier's FX node names, which the converters keep, or the weight's
name). A kept layer found with int8 weights fails the target. litert-torch 0.10 does exactly that
to a lone float op between a dequantize and a quantize (it re-quantizes it without a word);
keeping a neighbouring activation float did not help (the converter fuses it into the conv).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..carrier import Carrier
from ..errors import ExportError, require
from ..quant.fallback import float_layers, weighted_modules

Kinds = dict[str, set[str]]  # module path -> {"float", "int8"} over its conv/linear ops
_WEIGHTED = {"conv", "linear", "matmul", "conv_transpose"}


def _node_modules(carrier: Carrier) -> dict[str, str]:
    """Carrier FX node name -> module path, for its conv/linear nodes."""
    assert carrier.quantized is not None
    return {n.name: m for m, nodes in weighted_modules(carrier.quantized).items() for n in nodes}


def _by_name(name: str, nodes: dict[str, str]) -> str | None:
    """The module of the longest carrier node name that ``name`` is, or starts with (``conv2d_1_cast_fp16``)."""
    hits = [n for n in nodes if name == n or name.startswith(n + "_")]
    return nodes[max(hits, key=len)] if hits else None


def _by_weight(weight: str, modules: set[str]) -> str | None:
    """``mid.0.weight`` or ``p_mid_0_weight`` -> ``mid.0``."""
    for m in modules:
        if weight in (f"{m}.weight", f"p_{m.replace('.', '_')}_weight"):
            return m
    return None


def onnx_kinds(path: Path, carrier: Carrier) -> Kinds:
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    nodes = _node_modules(carrier)
    out: Kinds = {}
    for n in graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        module = _by_name(n.name.removeprefix("node_"), nodes) or _by_weight(n.input[1], set(nodes.values()))
        if module is not None:
            out.setdefault(module, set()).add("int8" if producer.get(n.input[1]) == "DequantizeLinear" else "float")
    return out


def _in_order(carrier: Carrier, ops: list[tuple[str | None, int, str]]) -> Kinds:
    """Name ops by module, or by graph order where names are gone (NHWC I/O wrappers drop them).

    ``ops``: (module or None, weight element count, kind) in the file's order. Order is trusted only
    when the file has as many conv/linear ops as the carrier and every weight has the same size.
    """
    assert carrier.quantized is not None
    nodes = [(m, n) for m, ns in weighted_modules(carrier.quantized).items() for n in ns]
    nodes.sort(key=lambda mn: list(carrier.quantized.graph.nodes).index(mn[1]))  # type: ignore[union-attr]
    sizes = [_numel(n) for _, n in nodes]
    by_order = len(nodes) == len(ops) and all(s == o[1] for s, o in zip(sizes, ops))
    out: Kinds = {}
    for i, (module, _, kind) in enumerate(ops):
        where = module or (nodes[i][0] if by_order else None)
        if where is not None:
            out.setdefault(where, set()).add(kind)
    return out


def _numel(node: torch.fx.Node) -> int:
    w = node.args[1] if len(node.args) > 1 else None
    val = w.meta.get("val") if isinstance(w, torch.fx.Node) else None
    return int(val.numel()) if isinstance(val, torch.Tensor) else -1


def tflite_kinds(path: Path, carrier: Carrier) -> Kinds:
    from .tflite import _read_model, _schema
    from .tflite_ops import module_path

    s = _schema()
    model = _read_model(path.read_bytes())
    sg = model.subgraphs[0]
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if isinstance(v, int)}
    known = {name for name, _ in carrier.float_model.named_modules() if name}
    ops: list[tuple[str | None, int, str]] = []
    for op in sg.operators:
        oc = model.operatorCodes[op.opcodeIndex]
        kind = names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "")
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV") or len(op.inputs) < 2:
            continue
        tensor = sg.tensors[op.outputs[0]].name
        weight = sg.tensors[op.inputs[1]]  # the filter, for TRANSPOSE_CONV too
        size = 1
        for d in weight.shape if weight.shape is not None else []:
            size *= int(d)
        quantized = weight.type in (s.TensorType.INT8, s.TensorType.UINT8)
        ops.append((module_path(tensor.decode() if isinstance(tensor, bytes) else str(tensor or ""), known), size,
                    "int8" if quantized else "float"))
    return _in_order(carrier, ops)


def coreml_kinds(path: Path, carrier: Carrier) -> Kinds:
    ct = require("coremltools", "coreml")
    fn = ct.utils.load_spec(str(path)).mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    producer = {o.name: op.type for op in ops for o in op.outputs}
    nodes = _node_modules(carrier)
    out: Kinds = {}
    for op in ops:
        if op.type not in _WEIGHTED or "weight" not in op.inputs and "y" not in op.inputs:
            continue
        args = op.inputs["weight" if "weight" in op.inputs else "y"].arguments
        weight = args[0].name if args else ""
        module = _by_name(op.outputs[0].name, nodes) or _by_weight(weight, set(nodes.values()))
        if module is not None:
            quantized = "dequantize" in producer.get(weight, "") or "shift_scale" in producer.get(weight, "")
            out.setdefault(module, set()).add("int8" if quantized else "float")
    return out


def executorch_weights(gm: torch.fx.GraphModule) -> dict[str, str]:
    """FX node name / module path -> "int8" or "float" for the conv/linear ops of a lowered program."""
    graphs = [gm.graph] + [getattr(gm, str(n.target)).original_module.graph for n in gm.graph.nodes
                           if n.op == "get_attr" and str(n.target).startswith("lowered_module")]
    out: dict[str, str] = {}
    for graph in graphs:
        for n in graph.nodes:
            name = str(getattr(n.target, "__name__", n.target))
            if n.op != "call_function" or not any(k in name for k in ("convolution", "linear")) or len(n.args) < 2:
                continue
            w = n.args[1]
            stack = n.meta.get("nn_module_stack") or {}
            where = str(list(stack.values())[-1][0]) if stack else (w.name if isinstance(w, torch.fx.Node) else "")
            quantized = isinstance(w, torch.fx.Node) and "dequantize" in str(w.target)
            out[where] = "int8" if quantized else "float"
    return out


def executorch_kinds(info: dict[str, Any], carrier: Carrier) -> Kinds:
    modules = set(_node_modules(carrier).values())
    out: Kinds = {}
    for where, kind in (info.get("weights") or {}).items():
        module = where if where in modules else _by_weight(where, modules)
        if module is not None:
            out.setdefault(module, set()).add(kind)
    return out


READERS: dict[str, Callable[[Path, dict[str, Any], Carrier], Kinds]] = {
    "onnx": lambda p, _i, c: onnx_kinds(p, c),
    "tflite": lambda p, _i, c: tflite_kinds(p, c),
    "coreml": lambda p, _i, c: coreml_kinds(p, c),
    "executorch": lambda _p, i, c: executorch_kinds(i, c),
}

_WHY = {"tflite": "litert-torch re-quantizes a lone float op between a dequantize and a quantize (0.10), "}


def check_float_layers(fmt: str, path: Path, info: dict[str, Any], carrier: Carrier, target: str) -> dict[str, str]:
    """{module: "float" | "int8" | "not found"} for the carrier's float layers; raises when one became int8."""
    if carrier.quantized is None or fmt not in READERS:
        return {}
    expected = float_layers(carrier.quantized)
    if not expected:
        return {}
    kinds = READERS[fmt](path, info, carrier)
    found = {m: ("int8" if "int8" in kinds[m] else "float") if m in kinds else "not found" for m in expected}
    lost = [m for m, k in found.items() if k == "int8"]
    if lost:
        raise ExportError(f"the {fmt} file holds {', '.join(lost)} in int8, which the carrier keeps float "
                          f"(qat.float_modules / qat.fallback): {_WHY.get(fmt, 'the converter quantized it, ')}"
                          "so the accuracy the fallback bought is lost", target=target,
                          fix="drop this target for this student, or use an ONNX, Core ML or ExecuTorch target")
    return found
