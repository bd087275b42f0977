"""Which 8-bit type an int8 QDQ ONNX file stores its quantized tensors in.

The carrier's int8 values (weights in [-127, 127], activations with zero points in [-128, 127]) map
exactly onto uint8 by adding 128 to every value and zero point: ``s * (q - z)`` is unchanged. The
choice only decides which integer kernels onnxruntime picks, and that decides the numbers:

- ``int8`` (S8S8 QDQ): what TensorRT and QNN take. On x86 onnxruntime first rewrites S8 activations
  to U8 (its QDQS8ToU8 transformer) and runs U8S8 kernels; without VNNI those use ``vpmaddubsw``,
  which saturates the sum of two u8*s8 products at 16 bits once full-range weights meet large
  activations (its documentation recommends 7-bit weights or U8U8 for that reason). On the
  Fashion-MNIST student that moved 5.6% of predictions (drift -1.6 pt).
- ``uint8`` (U8U8 QDQ): onnxruntime's U8U8 kernels widen to 16 bits before multiplying and never
  saturate, on every CPU; the artifact then matches the QAT simulation on AVX2, AVX-512, VNNI and
  ARM alike. This is the default.

The exact rewrites after it let onnxruntime fuse more of an int8 graph into integer kernels: a mean
over H, W becomes GlobalAveragePool, and a float scalar operand of Add/Mul its own int8 constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _int8_qdq_names(graph: Any) -> set[str]:
    """Initializers/constants a Q/DQ node reads as quantized data (DQ input 0) or zero point (input 2)."""
    names: set[str] = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            names.update(node.input[i] for i in (0, 2) if i < len(node.input) and node.input[i])
        elif node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2]:
            names.add(node.input[2])
    return names


def _shift(arr: np.ndarray) -> np.ndarray:
    return (arr.astype(np.int16) + 128).astype(np.uint8)


def store_as_uint8(model: Any) -> int:
    """Rewrite every int8 Q/DQ tensor of ``model`` as uint8 (value + 128); returns how many changed.

    A tensor that some other op also reads (none in edgeforge's exports) is left int8 and so are
    the Q/DQ nodes using it, which keeps the rewrite exact whatever the graph holds.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    wanted = _int8_qdq_names(graph)
    other_readers = {i for n in graph.node if n.op_type not in QDQ_OPS for i in n.input}
    changed = 0
    for init in graph.initializer:
        if init.data_type == TensorProto.INT8 and init.name in wanted and init.name not in other_readers:
            init.CopyFrom(numpy_helper.from_array(_shift(numpy_helper.to_array(init)), init.name))
            changed += 1
    for node in graph.node:
        if node.op_type != "Constant" or node.output[0] not in wanted or node.output[0] in other_readers:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == TensorProto.INT8:
                attr.t.CopyFrom(numpy_helper.from_array(_shift(numpy_helper.to_array(attr.t)), attr.t.name))
                changed += 1
    return changed


def qdq_dtypes(model: Any) -> dict[str, int]:
    """How many Q/DQ zero points of each 8-bit type the file holds (for the artifact record)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in inits:
            init = inits[node.input[2]]
            if init.data_type in (TensorProto.INT8, TensorProto.UINT8):
                name = str(numpy_helper.to_array(init).dtype)
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _axes(node: Any, consts: dict[str, np.ndarray]) -> list[int] | None:
    """ReduceMean's axes: an attribute before opset 18, an input since (None when not a constant)."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == "axes":
            return [int(a) for a in helper.get_attribute_value(attr)]
    if len(node.input) > 1 and node.input[1] in consts:
        return [int(a) for a in consts[node.input[1]].reshape(-1)]
    return None


def _keepdims(node: Any) -> int:
    from onnx import helper

    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "keepdims"), 1)


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        for a in n.attribute if n.op_type == "Constant" else []:
            if a.name == "value":
                out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _ranks(model: Any) -> dict[str, int]:
    """Tensor name -> rank, from onnx's shape inference (exported files may carry no value_info)."""
    from onnx import shape_inference

    g = shape_inference.infer_shapes(model).graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.value_info, *g.input, *g.output]
            if v.type.tensor_type.HasField("shape")}


def global_average_pools(model: Any) -> int:
    """Rewrite DQ -> ReduceMean(axes H, W) -> Q on 4-D tensors as DQ -> GlobalAveragePool -> Q.

    onnxruntime has an int8 kernel for global average pooling (QLinearGlobalAveragePool) but none
    for ReduceMean, which it runs in float on the dequantized feature map: the squeeze-excite and
    head poolings of a MobileNet. Both compute the mean over H and W; without keepdims a Flatten on
    the quantized output restores the [N, C] shape, which changes no value. Returns how many changed.
    """
    from onnx import helper

    g = model.graph
    consts = _constants(g)
    ranks = _ranks(model)
    producers = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    flattens: list[tuple[Any, Any]] = []
    for node in g.node:
        if node.op_type != "ReduceMean" or sorted(a % 4 for a in (_axes(node, consts) or [])) != [2, 3]:
            continue
        dq, users = producers.get(node.input[0]), readers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        if any(o.name == node.output[0] for o in g.output) or ranks.get(node.input[0]) != 4:
            continue
        keep = _keepdims(node)
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        if not keep:
            q = users[0]
            pooled = f"{q.output[0]}_nc11"
            flattens.append((q, helper.make_node("Flatten", [pooled], [q.output[0]], name=f"{q.name}_flatten", axis=1)))
            q.output[0] = pooled
    for q, flatten in flattens:
        g.node.insert(list(g.node).index(q) + 1, flatten)
    # Shapes recorded for the rewritten tensors are stale ([N, C] where the pool gives [N, C, 1, 1]).
    stale = {q.output[0] for q, _ in flattens} | {n.output[0] for n in g.node if n.op_type == "GlobalAveragePool"}
    fresh = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(fresh)
    return sum(1 for n in g.node if n.op_type == "GlobalAveragePool")


def quantized_scalar_operands(model: Any) -> int:
    """Give Add/Mul a scalar constant operand as an exact DequantizeLinear(q=+-1, scale=|c|, zero point 0).

    The carrier keeps the constants of a decomposed hardsigmoid (x + 3, x * 1/6) in float, so
    onnxruntime sees DQ -> Add(x, 3.0) -> Q and runs it in float. With the constant behind its own
    DequantizeLinear both operands are quantized and it fuses QLinearAdd / QLinearMul. ``1 * |c|``
    is ``|c|`` in float32, so the value the op adds or multiplies by is bit-identical. Run before
    ``store_as_uint8`` (which shifts the new int8 constants like every other). Returns how many changed.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    consts = _constants(g)
    producers = {o: n for n in g.node for o in n.output}
    new_nodes: list[tuple[Any, Any]] = []
    for node in g.node:
        if node.op_type not in ("Add", "Mul") or len(node.input) != 2:
            continue
        sides = [producers.get(i) for i in node.input]
        for k in (0, 1):
            c, other = consts.get(node.input[k]), sides[1 - k]
            if c is None or c.size != 1 or c.dtype != np.float32 or float(c.reshape(())) == 0.0:
                continue
            if other is None or other.op_type != "DequantizeLinear":
                continue
            value = float(c.reshape(()))
            base = f"{node.name or node.output[0]}_scalar{k}"
            g.initializer.extend([
                helper.make_tensor(f"{base}_q", TensorProto.INT8, [], [1 if value > 0 else -1]),
                numpy_helper.from_array(np.array(abs(value), dtype=np.float32), f"{base}_scale"),
                helper.make_tensor(f"{base}_zero_point", TensorProto.INT8, [], [0]),
            ])
            dq = helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zero_point"],
                                  [f"{base}_dq"], name=f"{base}_DequantizeLinear")
            node.input[k] = f"{base}_dq"
            new_nodes.append((node, dq))
    for consumer, dq in new_nodes:
        g.node.insert(list(g.node).index(consumer), dq)
    return len(new_nodes)
