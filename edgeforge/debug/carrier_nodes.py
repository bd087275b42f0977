"""The carrier's quantized nodes (activation quantize ops) in graph order, and their values on inputs.

A PT2E carrier holds one ``quantize_per_tensor`` per int8 activation tensor; every int8 artifact
materializes the same tensor (an ONNX QuantizeLinear output, a TFLite int8 tensor). The layer
those codes come from is the chain of float ops between the previous dequantize ops and the
quantize: its op names (``conv2d+relu``) and the module of its first op.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_QUANTIZE = ("quantize_per_tensor",)
_BOUNDARY = ("quantize_per_tensor", "dequantize_per_tensor", "dequantize_per_channel", "quantize_per_channel")


@dataclass(frozen=True)
class QuantNode:
    name: str  # the carrier's FX node name of the quantize op
    module: str  # the layer's module path ('' for ops of the top module, 'input' for the input)
    op: str  # the float ops it quantizes, joined by '+'
    scale: float
    zero_point: int


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    packet = getattr(target, "_overloadpacket", None)
    return str(getattr(packet, "__name__", None) or getattr(target, "__name__", target))


def _const(gm: torch.fx.GraphModule, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        value = operator.attrgetter(str(arg.target))(gm)
        return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    return arg


def _is_activation_quantize(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or _op_name(node) not in _QUANTIZE:
        return False
    src = node.args[0]
    return isinstance(src, torch.fx.Node) and src.op != "get_attr"


def _layer_ops(node: torch.fx.Node, order: dict[torch.fx.Node, int]) -> list[torch.fx.Node]:
    """The float ops feeding ``node`` back to the previous quantize/dequantize ops."""
    seen: set[torch.fx.Node] = set()
    stack = [a for a in node.all_input_nodes]
    while stack:
        cur = stack.pop()
        if cur in seen or cur.op != "call_function" or _op_name(cur) in _BOUNDARY:
            continue
        seen.add(cur)
        stack.extend(cur.all_input_nodes)
    return sorted(seen, key=order.__getitem__)


def _module_of(ops: list[torch.fx.Node]) -> str:
    for n in ops:
        stack = n.meta.get("nn_module_stack") or {}
        if stack:
            path = str(list(stack.values())[-1][0])
            if path:
                return path
    return ""


def quantized_nodes(gm: torch.fx.GraphModule) -> list[QuantNode]:
    """Every activation quantize op of the carrier, in graph order."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    out = []
    for node in gm.graph.nodes:
        if not _is_activation_quantize(node):
            continue
        ops = _layer_ops(node, order)
        src = node.args[0]
        is_input = isinstance(src, torch.fx.Node) and src.op == "placeholder"
        module = "input" if is_input else _module_of(ops)
        op = "quantize(input)" if is_input else "+".join(_op_name(n) for n in ops) or "quantize"
        scale, zp = _const(gm, node.args[1]), _const(gm, node.args[2])
        out.append(QuantNode(node.name, module, op, float(scale), int(zp)))
    return out


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names = names
        self.seen: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        if n.name in self.names:
            self.seen[n.name] = value.detach().clone()
        return value


def carrier_values(gm: torch.fx.GraphModule, nodes: list[QuantNode], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each node's tensor on ``x``, dequantized (``scale * (q - zero_point)``), NCHW float64."""
    rec = _Recorder(gm, {n.name for n in nodes})
    with torch.no_grad():
        rec.run(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return {n.name: (rec.seen[n.name].double().numpy() - n.zero_point) * n.scale for n in nodes}


def output_step(gm: torch.fx.GraphModule) -> float | None:
    """The quantization step (scale) of the carrier's output, when the output is a dequantized int8 tensor.

    None when the output is float (a float head kept by qat.fallback, or no quantize op at the end).
    """
    out = next(n for n in gm.graph.nodes if n.op == "output")
    first = out.args[0]
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if not isinstance(first, torch.fx.Node) or _op_name(first) != "dequantize_per_tensor":
        return None
    src = first.args[0]
    if not isinstance(src, torch.fx.Node) or not _is_activation_quantize(src):
        return None
    return float(_const(gm, src.args[1]))
