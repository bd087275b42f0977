"""Conv/linear weights with a zero point, rewritten so that every format computes them as the carrier does.

edgeforge's quantizer gives weights zero point 0 (per-channel symmetric). A carrier made by another
tool may not: NNCF's ``quantize_pt2e`` (3.4) maps a weight spec other than [-127, 127] onto its own
full [-128, 127] grid, and its first-layer overflow fix (half the range) then stores the stem
convolution's weights as codes in [-62, 64] with zero point 1 on every channel. onnxruntime and
Core ML subtract a weight zero point; LiteRT's and XNNPACK's int8 convolution / fully-connected
kernels take weights as symmetric and ignore it, so there every such weight was one step off.

``scale * (q - z)`` is ``scale * ((q - z) - 0)``: storing the codes ``q - z`` with zero point 0 is
the same carrier, bit for bit, whenever ``q - z`` fits in int8. When it does not, no int8 weight
tensor holds it and the export is refused, naming the node.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

from ..errors import ExportError
from .op_families import family_of


def _ops() -> Any:
    # quantized_decomposed ops exist once torchao (or torch.ao) has registered them: looked up on use.
    return torch.ops.quantized_decomposed


def _dequantize_ops() -> set[Any]:
    qd = _ops()
    return {qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor}


def _quantize_ops() -> set[Any]:
    qd = _ops()
    return {qd.quantize_per_channel.default, qd.quantize_per_tensor.default, qd.quantize_per_tensor.tensor}


def _value(gm: GraphModule, arg: Any) -> Any:
    if isinstance(arg, Node) and arg.op == "get_attr":
        return operator.attrgetter(str(arg.target))(gm)
    return arg


def _codes(gm: GraphModule, dq: Node) -> torch.Tensor | None:
    """The integer codes a constant weight's dequantize reads: a folded constant, or a quantize of one."""
    src = dq.args[0]
    if not isinstance(src, Node):
        return None
    if src.op == "call_function" and src.target in _quantize_ops() and isinstance(src.args[0], Node) \
            and src.args[0].op == "get_attr":
        with torch.no_grad():
            src_value = src.target(*[_value(gm, a) for a in src.args], **src.kwargs)  # type: ignore[operator]
    else:
        src_value = _value(gm, src)
    if isinstance(src_value, torch.Tensor) and not src_value.is_floating_point() and not src_value.is_complex():
        return src_value
    return None


def _zero_points(gm: GraphModule, dq: Node, codes: torch.Tensor) -> torch.Tensor:
    """The zero points broadcast against the codes (per channel along the dequantize's axis)."""
    zp = _value(gm, dq.args[2])
    z = torch.zeros((), dtype=torch.int64) if zp is None else torch.as_tensor(zp).to(torch.int64)
    if dq.target == _ops().dequantize_per_channel.default and z.numel() > 1:
        shape = [1] * codes.dim()
        axis = dq.args[3]
        shape[(axis if isinstance(axis, int) else 0) % codes.dim()] = -1
        z = z.reshape(shape)
    return z


def _weight_dequantizes(gm: GraphModule) -> list[Node]:
    """Dequantize nodes feeding the weight input of a conv/linear (the ops whose kernels want zp 0)."""
    found = []
    for node in gm.graph.nodes:
        family = family_of(node.target) if node.op == "call_function" else None
        if family is None or family.how != "weighted" or len(node.args) < 2:
            continue
        w = node.args[1]
        if isinstance(w, Node) and w.op == "call_function" and w.target in _dequantize_ops():
            found.append(w)
    return found


def _offset_weights(gm: GraphModule) -> list[tuple[str, torch.Tensor]]:
    """(dequantize node name, codes minus zero points) for each weight whose zero points are not all 0."""
    out = []
    for dq in _weight_dequantizes(gm):
        codes = _codes(gm, dq)
        if codes is None:
            continue
        z = _zero_points(gm, dq, codes)
        if bool((z != 0).any()):
            out.append((dq.name, codes.to(torch.int64) - z))
    return out


def symmetric_weights(gm: GraphModule, target: str) -> GraphModule:
    """``gm`` itself when every conv/linear weight has zero point 0; else a copy storing ``q - z`` with zero point 0.

    The copy computes exactly what ``gm`` computes. Raises ExportError when some ``q - z`` is
    outside [-128, 127] (e.g. codes of a uint8 grid with an off-centre zero point).
    """
    offsets = _offset_weights(gm)
    if not offsets:
        return gm
    for name, shifted in offsets:
        lo, hi = int(shifted.min()), int(shifted.max())
        if lo < -128 or hi > 127:
            raise ExportError(f"carrier node {name}: weight codes minus zero points span [{lo}, {hi}], outside int8; "
                              "int8 conv/linear kernels take weights with zero point 0 in one int8 tensor",
                              target=target, op=name, fix="quantize the weights symmetrically (zero point 0)")
    out = copy.deepcopy(gm)
    nodes = {n.name: n for n in out.graph.nodes}
    for k, (name, shifted) in enumerate(offsets):
        _store_symmetric(out, nodes[name], shifted.to(torch.int8), k)
    out.graph.eliminate_dead_code()
    out.graph.lint()
    out.recompile()
    return out


def _store_symmetric(gm: GraphModule, dq: Node, codes: torch.Tensor, k: int) -> None:
    """Point ``dq`` at ``codes`` (int8) with zero point 0 and a [-127 or -128, 127] range, in place."""
    qmin = -128 if int(codes.min()) < -127 else -127
    gm.register_buffer(f"_edgeforge_symmetric_codes_{k}", codes)
    per_channel = dq.target == _ops().dequantize_per_channel.default
    zp_value = _value(gm, dq.args[2])
    with gm.graph.inserting_before(dq):
        codes_node = gm.graph.get_attr(f"_edgeforge_symmetric_codes_{k}")
        if isinstance(zp_value, torch.Tensor):
            gm.register_buffer(f"_edgeforge_symmetric_zero_points_{k}", torch.zeros_like(zp_value))
            zp: Any = gm.graph.get_attr(f"_edgeforge_symmetric_zero_points_{k}")
        else:
            zp = None if per_channel and zp_value is None else 0
    tail = (dq.args[3],) if per_channel else ()
    dq.args = (codes_node, dq.args[1], zp, *tail, qmin, 127, torch.int8)
