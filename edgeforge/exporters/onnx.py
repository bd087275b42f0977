"""ONNX exporter: fp32 from the float student, int8 QDQ from the QAT carrier (scales as learned)."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..carrier import Carrier
from ..errors import ExportError, require
from ..inputs import batch_dims
from ..targets import TargetProfile
from .base import EXPORTERS, ExportedArtifact, Exporter, converter_failed
from .onnx_qdq import global_average_pools, qdq_dtypes, quantized_scalar_operands, store_as_uint8


def _export_program(model: torch.nn.Module, carrier: Carrier, target: TargetProfile) -> tuple[Any, tuple[torch.Tensor, ...]]:
    batch = target.input.batch
    if batch == "dynamic":
        ex = carrier.examples(2)
        ep = torch.export.export(model, ex, dynamic_shapes=batch_dims(carrier.inputs))
    else:
        ex = carrier.examples(int(batch))
        ep = torch.export.export(model, ex)
    return ep, ex


def quantize_biases(model: Any) -> int:
    """Store float Conv/Gemm biases as int32 with scale s_input * s_weight, behind a DequantizeLinear.

    PT2E leaves biases in float; onnxruntime (and QNN, TensorRT) fuse DQ -> Conv/Gemm -> Q into
    integer kernels only when the bias is int32 with exactly that scale. The rounding error is
    below half a bias quantum, orders of magnitude under the activation step.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    done = 0
    new_nodes = []
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if not dq_x or not dq_w or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        if dq_x.input[1] not in inits or dq_w.input[1] not in inits:
            continue
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB", 0) != 1 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
        s_x = numpy_helper.to_array(inits[dq_x.input[1]]).astype(np.float64).reshape(-1)
        s_w = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float64).reshape(-1)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        scale = (s_x * s_w) * np.ones_like(bias)
        q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = f"{node.input[2]}_int32"
        g.initializer.extend([
            numpy_helper.from_array(q, base),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.zeros_like(q), f"{base}_zero_point"),
        ])
        out = f"{base}_dq"
        new_nodes.append((node, helper.make_node(
            "DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"], [out], name=f"{base}_DequantizeLinear", axis=0,
        )))
        node.input[2] = out
        done += 1
    for consumer, dq in new_nodes:
        idx = list(g.node).index(consumer)
        g.node.insert(idx, dq)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return done


def strip_debug_info(model: Any, metadata: dict[str, str]) -> None:
    """Drop the exporter's per-node stack traces and doc strings (half the file on small models)."""
    from onnx import helper

    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    del model.metadata_props[:]
    helper.set_model_props(model, metadata)


def op_histogram(model: Any) -> dict[str, int]:
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


def _rename_io(model: Any, input_names: list[str], output_name: str) -> None:
    g = model.graph
    if len(g.input) != len(input_names):
        raise ExportError(f"the exported graph has {len(g.input)} inputs, the model declares {len(input_names)} "
                          f"({', '.join(input_names)}); an input the model ignores is dropped by the exporter")
    renames = {vi.name: name for vi, name in zip(g.input, input_names, strict=True)}
    renames[g.output[0].name] = output_name
    for vi in list(g.input) + list(g.output[:1]):
        vi.name = renames[vi.name]
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in renames:
                n.input[i] = renames[name]
        for i, name in enumerate(n.output):
            if name in renames:
                n.output[i] = renames[name]


@contextlib.contextmanager
def _quiet_logger(prefix: str) -> Iterator[None]:
    """The dynamo exporter logs a warning per missing torchvision op on every export."""
    names = [n for n in logging.root.manager.loggerDict if n == prefix or n.startswith(prefix + ".")]
    loggers = [logging.getLogger(n) for n in [prefix, *names]]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


class _HalfCompute(torch.nn.Module):
    """fp16 weights and compute behind float32 I/O (the form GPUs and TensorRT run fp16 models in)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.model(*(x.half() if x.is_floating_point() else x for x in xs)).float()


def _inputs_info(model: Any) -> list[dict[str, Any]]:
    """Name, element type and shape (a dynamic dim by its name) of each graph input, in order."""
    from onnx import TensorProto

    out = []
    for vi in model.graph.input:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        out.append({"name": vi.name, "dtype": TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims})
    return out


class OnnxExporter(Exporter):
    format = "onnx"
    suffix = ".onnx"
    extra = "onnx"
    packages = ("onnx", "onnxscript", "onnxruntime")

    def export(self, carrier: Carrier, target: TargetProfile, path: Path) -> ExportedArtifact:
        onnx = require("onnx", "onnx")
        require("onnxscript", "onnx")
        self.check_target(target)
        if target.input.layout != "NCHW" or target.input.dtype != "float32":
            raise ExportError(
                f"target {target.name}: the ONNX exporter writes NCHW float32 (and integer token) inputs; "
                "set input.layout: NCHW, input.dtype: float32"
            )
        if target.precision == "int8":
            if carrier.quantized is None:
                raise ExportError(f"target {target.name}: int8 needs the QAT carrier, which this build did not produce")
            model: torch.nn.Module = carrier.quantized
        elif target.precision == "fp16":
            model = _HalfCompute(copy.deepcopy(carrier.float_model).eval().half())
        else:
            model = carrier.float_model.eval()
        ep, ex = _export_program(model, carrier, target)
        opts = target.onnx
        buf = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buf), _quiet_logger("torch.onnx"):
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(ep, ex, dynamo=True, opset_version=opts.opset, verbose=False)
        except Exception as exc:
            raise converter_failed("torch.onnx.export", exc, carrier, target) from None
        if prog is None:
            raise ExportError(f"target {target.name}: torch.onnx.export returned no model")
        proto = prog.model_proto
        # One input keeps the profile's name (onnx.input_name); several keep the model's own names.
        names = [opts.input_name] if len(carrier.inputs) == 1 else [s.name for s in carrier.inputs]
        _rename_io(proto, names, opts.output_name)
        n_bias = quantize_biases(proto) if target.precision == "int8" else 0
        n_pools = global_average_pools(proto) if target.precision == "int8" else 0
        n_scalars = quantized_scalar_operands(proto) if target.precision == "int8" else 0
        if target.precision == "int8" and opts.qdq_dtype == "uint8":
            store_as_uint8(proto)
        strip_debug_info(proto, {"producer": "edgeforge", "model": carrier.name, "target": target.name,
                                 "precision": target.precision, "class_names": ",".join(carrier.class_names)})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        return ExportedArtifact(path, self.format, target.precision, {
            "opset": opts.opset,
            "ops": op_histogram(proto),
            "input": {"name": names[0], "layout": "NCHW", "dtype": carrier.inputs[0].dtype,
                      "batch": target.input.batch},
            "inputs": _inputs_info(proto),
            "output": {"name": opts.output_name},
            "int32_biases": n_bias,
            "global_average_pools": n_pools,
            "quantized_scalars": n_scalars,
            "qdq_zero_points": qdq_dtypes(proto),
            "exporter": f"torch.onnx (dynamo) {torch.__version__}, onnx {onnx.__version__}",
        })


EXPORTERS.add("onnx", OnnxExporter)
