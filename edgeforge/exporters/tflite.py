"""TFLite (LiteRT) exporter: fp32 / fp16 from the float student, full int8 from the QAT carrier.

Conversion goes through litert-torch (PyTorch -> TFLite, no TensorFlow needed). int8 files are
full-integer: the carrier's quantize/dequantize ops (scales learned during QAT, never re-calibrated)
become int8 tensors around CONV_2D / FULLY_CONNECTED / MEAN ... kernels. litert-torch then gives the
file int8 input and output; for float32 (or uint8) I/O this module adds a QUANTIZE op at the input
and a DEQUANTIZE (or QUANTIZE) op at the output, reusing the file's own scale and zero-point.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..carrier import Carrier
from ..errors import ExportError, require
from ..inputs import batch_dims
from ..quant.weight_codes import symmetric_weights
from ..records import Check
from ..targets import TargetProfile
from .base import EXPORTERS, ExportedArtifact, Exporter, converter_failed, first_line
from .tflite_ops import name_ops

_FLOAT_TYPES = ("float32", "float16", "bfloat16", "float64")


def unfold_quantized_weights(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Return a copy of a converted PT2E graph with folded int8 weights turned back into quantize ops.

    ``convert_pt2e`` (fold_quantize=True, the default) stores each weight as an int8 constant feeding a
    dequantize op. litert-torch lowers dequantize without its scales, so it needs the unfolded form
    ``float weight -> quantize -> dequantize`` (what ``fold_quantize=False`` would give). The float
    weight is ``q * scale``, so quantizing it again returns exactly ``q``: same carrier, same numbers.
    """
    qd = torch.ops.quantized_decomposed
    pairs = {
        qd.dequantize_per_channel.default: qd.quantize_per_channel.default,
        qd.dequantize_per_tensor.default: qd.quantize_per_tensor.default,
        qd.dequantize_per_tensor.tensor: qd.quantize_per_tensor.tensor,
    }
    gm = copy.deepcopy(gm)
    graph = gm.graph

    def value(arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            return operator.attrgetter(str(arg.target))(gm)
        return arg

    n = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in pairs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "get_attr":
            continue
        q = value(src)
        if not isinstance(q, torch.Tensor) or q.dtype not in (torch.int8, torch.uint8):
            continue
        args = [value(a) for a in node.args]
        kwargs = {k: value(v) for k, v in node.kwargs.items()}
        with torch.no_grad():
            w = node.target(*args, **kwargs).float()
        name = f"_edgeforge_unfolded_{n}"
        n += 1
        gm.register_buffer(name, w)
        with graph.inserting_before(node):
            get = graph.get_attr(name)
            qkwargs = {k: v for k, v in node.kwargs.items() if k != "out_dtype"}
            qnode = graph.call_function(pairs[node.target], (get, *node.args[1:]), qkwargs)
        node.replace_input_with(src, qnode)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm


def _set_eval(model: torch.nn.Module) -> None:
    # GraphModules from torch.export refuse .eval(); the flag only silences litert-torch's warning.
    for m in model.modules():
        m.training = False


# --- flatbuffer edits (float / uint8 I/O around a full-int8 graph) ---------------------------

def _schema() -> Any:
    return require("ai_edge_litert.schema_py_generated", "tflite")


def _read_model(data: bytes) -> Any:
    return _schema().ModelT.InitFromPackedBuf(bytearray(data), 0)


def _write_model(model: Any) -> bytes:
    flatbuffers = require("flatbuffers", "tflite")
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode_index(model: Any, builtin: int, version: int) -> int:
    s = _schema()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == builtin:
            oc.version = max(oc.version, version)
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode = builtin
    oc.deprecatedBuiltinCode = min(builtin, 127)
    oc.version = version
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


_TFL_TYPES = {"float32": 0, "uint8": 3, "int8": 9}


def set_io_types(data: bytes, input_dtype: str, output_dtype: str) -> bytes:
    """Give an int8-I/O model float32 or uint8 I/O by adding boundary QUANTIZE/DEQUANTIZE ops.

    The new boundary tensors keep the file's scale; uint8 ones shift the zero-point by 128.
    """
    s = _schema()
    model = _read_model(data)
    if len(model.subgraphs) != 1:
        raise ExportError(f"expected one subgraph, found {len(model.subgraphs)}")
    sg = model.subgraphs[0]
    rename: dict[int, int] = {}

    def boundary(old: int, dtype: str, suffix: str) -> int:
        t = sg.tensors[old]
        new = copy.deepcopy(t)
        new.name = (t.name.decode() if isinstance(t.name, bytes) else (t.name or "io")) + suffix
        new.type = _TFL_TYPES[dtype]
        new.buffer = 0
        if dtype == "float32":
            new.quantization = None
        else:  # uint8: same scale, zero-point + 128
            new.quantization = copy.deepcopy(t.quantization)
            new.quantization.zeroPoint = [int(z) + 128 for z in t.quantization.zeroPoint]
        sg.tensors.append(new)
        return len(sg.tensors) - 1

    for pos, old in enumerate(list(sg.inputs)):
        if sg.tensors[old].type != _TFL_TYPES["int8"] or input_dtype == "int8":
            continue
        new = boundary(old, input_dtype, f"_{input_dtype}")
        op = s.OperatorT()
        op.opcodeIndex = _opcode_index(model, s.BuiltinOperator.QUANTIZE, 2)
        op.inputs, op.outputs = [new], [old]
        sg.operators.insert(0, op)
        sg.inputs[pos] = new
        rename[old] = new
    for pos, old in enumerate(list(sg.outputs)):
        if sg.tensors[old].type != _TFL_TYPES["int8"] or output_dtype == "int8":
            continue
        new = boundary(old, output_dtype, f"_{output_dtype}")
        op = s.OperatorT()
        if output_dtype == "float32":
            op.opcodeIndex = _opcode_index(model, s.BuiltinOperator.DEQUANTIZE, 2)
        else:
            op.opcodeIndex = _opcode_index(model, s.BuiltinOperator.QUANTIZE, 2)
        op.inputs, op.outputs = [old], [new]
        sg.operators.append(op)
        sg.outputs[pos] = new
        rename[old] = new
    for sig in model.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            tm.tensorIndex = rename.get(tm.tensorIndex, tm.tensorIndex)
    return _write_model(model)


def name_inputs(data: bytes, names: list[str]) -> bytes:
    """Give the file's inputs the model's names (litert-torch writes ``args_0``, ``args_1``, ...).

    The signature's input names and the input tensors' names change; the subgraph's input order
    (the model's argument order, which sessions feed) stays as it is.
    """
    model = _read_model(data)
    sg = model.subgraphs[0]
    if len(sg.inputs) != len(names):
        raise ExportError(f"the converted file has {len(sg.inputs)} inputs, the model declares {len(names)} "
                          f"({', '.join(names)}); an input the model ignores is dropped by the converter")
    by_tensor = {int(t): name for t, name in zip(sg.inputs, names, strict=True)}
    for t, name in by_tensor.items():
        old = sg.tensors[t].name
        old = old.decode() if isinstance(old, bytes) else str(old or "")
        sg.tensors[t].name = f"serving_default_{name}:0" if old.startswith("serving_default_") else name
    for sig in model.signatureDefs or []:
        for tm in sig.inputs or []:
            tm.name = by_tensor.get(int(tm.tensorIndex), tm.name)
    return _write_model(model)


def fp16_weights(data: bytes) -> bytes:
    """Store CONV/DEPTHWISE_CONV/FULLY_CONNECTED weights as float16 behind DEQUANTIZE ops (ai-edge-quantizer)."""
    aeq = require("ai_edge_quantizer.quantizer", "tflite")
    qtyping = require("ai_edge_quantizer.qtyping", "tflite")
    qt = aeq.Quantizer(bytearray(data))
    cfg = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )
    qt.update_quantization_recipe(regex=".*", operation_name="*", op_config=cfg, algorithm_key="float_casting")
    result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


# --- describing a .tflite file ---------------------------------------------------------------

def _names(cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _io(sg: Any, idx: list[int], sigs: list[Any], tname: Any) -> list[dict[str, Any]]:
    """Name, shape, dtype, scale and zero-point of the graph's input or output tensors."""
    out = []
    for i in idx:
        t = sg.tensors[i]
        q = t.quantization
        scale = [float(v) for v in (q.scale if q is not None and q.scale is not None else [])]
        zp = [int(v) for v in (q.zeroPoint if q is not None and q.zeroPoint is not None else [])]
        sig_name = next((tm.name for tm in sigs if tm.tensorIndex == i), t.name)
        out.append({
            "name": sig_name.decode() if isinstance(sig_name, bytes) else sig_name,
            "shape": [int(v) for v in (t.shapeSignature if t.shapeSignature is not None else t.shape)],
            "dtype": tname(i),
            "scale": scale[0] if len(scale) == 1 else None,
            "zero_point": zp[0] if len(zp) == 1 else None,
        })
    return out


def describe(data: bytes) -> dict[str, Any]:
    """Builtin ops with their tensor types, I/O dtypes / scales / zero-points, float ops left over."""
    s = _schema()
    model = _read_model(data)
    op_names = _names(s.BuiltinOperator)
    type_names = {k: v.lower() for k, v in _names(s.TensorType).items()}
    sg = model.subgraphs[0]
    const = {i for i, t in enumerate(sg.tensors) if t.buffer and model.buffers[t.buffer].data is not None}

    def tname(i: int) -> str:
        return type_names.get(sg.tensors[i].type, "?") if i >= 0 else "-"

    ops: dict[str, dict[str, Any]] = {}
    float_ops: list[dict[str, Any]] = []
    float_edges: list[dict[str, Any]] = []
    io_converters: list[str] = []
    inputs, outputs = set(sg.inputs), set(sg.outputs)
    for k, op in enumerate(sg.operators):
        oc = model.operatorCodes[op.opcodeIndex]
        name = op_names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), f"OP{oc.builtinCode}")
        if oc.customCode:
            name = f"CUSTOM:{oc.customCode.decode() if isinstance(oc.customCode, bytes) else oc.customCode}"
        ins = [i for i in op.inputs if i >= 0]
        sig = f"{','.join(tname(i) for i in ins)} -> {','.join(tname(i) for i in op.outputs)}"
        entry = ops.setdefault(name, {"count": 0, "types": []})
        entry["count"] += 1
        if sig not in entry["types"]:
            entry["types"].append(sig)
        is_float = any(tname(i) in _FLOAT_TYPES for i in [*ins, *op.outputs])
        at_io = (name in ("QUANTIZE", "DEQUANTIZE")
                 and (any(i in inputs for i in ins) or any(o in outputs for o in op.outputs)))
        if at_io:
            io_converters.append(f"{name}#{k} ({sig})")
        elif is_float and not (name == "DEQUANTIZE" and all(i in const for i in ins)):
            # QUANTIZE/DEQUANTIZE inside the graph are the edges of a float island, listed apart.
            out_name = sg.tensors[op.outputs[0]].name if len(op.outputs) else b""
            (float_edges if name in ("QUANTIZE", "DEQUANTIZE") else float_ops).append({
                "op": name, "index": k, "dtype": tname(op.outputs[0]) if len(op.outputs) else "-",
                "tensor": out_name.decode() if isinstance(out_name, bytes) else str(out_name or "")})

    signature = model.signatureDefs[0] if model.signatureDefs else None
    weight_types: dict[str, int] = {}
    for i in (i for op in sg.operators for i in op.inputs if i in const):
        weight_types[tname(i)] = weight_types.get(tname(i), 0) + 1
    return {
        "ops": dict(sorted(ops.items())),
        "constant_tensor_types": dict(sorted(weight_types.items())),
        "inputs": _io(sg, list(sg.inputs), list(signature.inputs or []) if signature else [], tname),
        "outputs": _io(sg, list(sg.outputs), list(signature.outputs or []) if signature else [], tname),
        "io_converters": io_converters,
        "float_ops": float_ops,
        "float_edges": float_edges,
    }


# --- the exporter ----------------------------------------------------------------------------

def describe_float_ops(float_ops: list[Any], limit: int = 8) -> str:
    """``features.3.se.gate: hardsigmoid (ADD)`` where the exporter knows the module, else the TFLite op."""
    seen: dict[str, int] = {}
    for o in float_ops:
        if isinstance(o, dict):
            where = ": ".join(str(o[k]) for k in ("module", "torch_op") if o.get(k))
            text = f"{where} ({o.get('op', '?')})" if where else str(o.get("op", o))
        else:
            text = str(o).split("#")[0]
        seen[text] = seen.get(text, 0) + 1
    parts = [f"{t} x{n}" if n > 1 else t for t, n in seen.items()]
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more)" if len(parts) > limit else "")


def _check_io(info: dict[str, Any], carrier: Carrier, target: TargetProfile) -> None:
    """Float inputs (and the output) have the profile's dtype; integer inputs stay integers, unscaled."""
    got = [i["dtype"] for i in info["inputs"]] + [info["outputs"][0]["dtype"]]
    want = [target.input.dtype if s.is_float else s.dtype for s in carrier.inputs] + [target.tflite.output_dtype]
    if len(got) != len(want):
        raise ExportError(f"the converted file has {len(got) - 1} input(s), the model declares {len(want) - 1} "
                          f"({', '.join(s.name for s in carrier.inputs)})", target=target.name)
    # litert-torch may narrow int64 ids to int32: any integer type is accepted for an integer input.
    bad = [(w, g) for w, g in zip(want, got, strict=True) if w != g and not (w.startswith("int") and g in ("int32", "int64"))]
    if bad:
        raise ExportError(f"the converted file has {'/'.join(got)} inputs/output, the profile asks for "
                          f"{'/'.join(want)} (litert-torch changed its int8 I/O?)", target=target.name)


class TfliteExporter(Exporter):
    format = "tflite"
    suffix = ".tflite"
    extra = "tflite"
    packages = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")

    def check_target(self, target: TargetProfile) -> None:
        super().check_target(target)
        in_dt, out_dt = target.input.dtype, target.tflite.output_dtype
        if target.precision != "int8" and (in_dt != "float32" or out_dt != "float32"):
            raise ExportError(
                f"target {target.name}: quantized I/O ({in_dt} in, {out_dt} out) needs precision int8; "
                "set input.dtype and tflite.output_dtype to float32 for fp32/fp16"
            )

    def artifact_checks(self, info: dict[str, Any], target: TargetProfile) -> list[Check]:
        """A full-int8 file must hold only int8 kernels: a float op falls back to the CPU on an NPU/DSP."""
        if target.precision != "int8":
            return []
        float_ops = info.get("float_ops") or []
        if not float_ops:
            return [Check("float_ops", True, 0, 0, "every op is int8 (apart from the I/O edge)")]
        names = describe_float_ops(float_ops)
        if target.tflite.allow_float_ops:
            return [Check("float_ops", True, len(float_ops), "allowed",
                          f"{len(float_ops)} float op(s) kept, as tflite.allow_float_ops allows: {names}")]
        return [Check("float_ops", False, len(float_ops), 0,
                      f"{len(float_ops)} op(s) stay float in the full-int8 file: {names}; replace them in the "
                      "student, or accept the CPU fallback with tflite.allow_float_ops: true")]

    def export(self, carrier: Carrier, target: TargetProfile, path: Path) -> ExportedArtifact:
        self.check_target(target)
        with _quiet():  # importing litert-torch logs from C++ (absl, oneDNN) straight to fd 2
            litert_torch = require("litert_torch", "tflite")
            require("ai_edge_litert", "tflite")
        data = name_inputs(_convert(litert_torch, carrier, target), [s.name for s in carrier.inputs])
        if target.precision == "fp16":
            with _quiet():
                data = fp16_weights(data)
        elif target.precision == "int8":
            try:
                data = set_io_types(data, target.input.dtype, target.tflite.output_dtype)
            except ExportError as exc:
                raise converter_failed("int8 I/O of litert-torch's file", exc, carrier, target) from None
        info = describe(data)
        _check_io(info, carrier, target)
        if target.precision != "int8":
            info.pop("float_ops")  # every op is float by design; the list is about int8 files
            info.pop("float_edges")
        else:
            name_ops([*info["float_ops"], *info["float_edges"]], carrier.float_model, carrier.quantized)
        path.write_bytes(data)
        import importlib.metadata as md

        versions = []
        for pkg in self.packages:
            with contextlib.suppress(md.PackageNotFoundError):
                versions.append(f"{pkg} {md.version(pkg)}")
        return ExportedArtifact(path, self.format, target.precision, {
            **info,
            "layout": target.input.layout,
            "batch": target.input.batch,
            "full_integer": target.precision == "int8" and not info.get("float_ops") and not info.get("float_edges"),
            "exporter": ", ".join(versions),
        })


def _source_model(litert_torch: Any, carrier: Carrier,
                  target: TargetProfile) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], list[int]]:
    """The module litert-torch converts (the unfolded carrier for int8), its example inputs, and
    which of them are turned channel-last (NHWC applies to 4-D float image inputs only)."""
    if target.precision == "int8":
        if carrier.quantized is None:
            raise ExportError("int8 needs the QAT carrier, which this build did not produce", target=target.name)
        with _quiet():
            # LiteRT's int8 CONV_2D / FULLY_CONNECTED kernels ignore a weight zero point (weight_codes).
            model: torch.nn.Module = unfold_quantized_weights(symmetric_weights(carrier.quantized, target.name))
    else:
        model = copy.deepcopy(carrier.float_model)
    _set_eval(model)
    batch = target.input.batch
    examples = carrier.examples(2 if batch == "dynamic" else int(batch))
    nhwc = [i for i, s in enumerate(carrier.inputs) if s.is_image] if target.input.layout == "NHWC" else []
    if nhwc:
        model = litert_torch.to_channel_last_io(model, args=nhwc)
        examples = tuple(x.permute(0, 2, 3, 1).contiguous() if i in nhwc else x for i, x in enumerate(examples))
    return model, examples, nhwc


def _convert(litert_torch: Any, carrier: Carrier, target: TargetProfile) -> bytes:
    model, examples, nhwc = _source_model(litert_torch, carrier, target)
    batch = target.input.batch
    kwargs: dict[str, Any] = {}
    if batch == "dynamic":
        specs = batch_dims(carrier.inputs)
        # to_channel_last_io's wrapper takes *args: its spec is nested one level deeper.
        kwargs["dynamic_shapes"] = (specs,) if nhwc else specs
    if target.precision == "int8":
        from litert_torch.quantize import pt2e_quantizer as pq
        from litert_torch.quantize.quant_config import QuantConfig

        # litert-torch reads only `global_config.is_dynamic` from this object (static QDQ
        # lowering); the quantize/dequantize ops and scales all come from our carrier.
        flag = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
        kwargs["quant_config"] = QuantConfig(pt2e_quantizer=flag)
    try:
        with _quiet():
            return bytes(litert_torch.convert(model, examples, **kwargs).model_content())
    except Exception as exc:
        if batch == "dynamic":
            raise ExportError(f"litert-torch could not convert with a dynamic batch ({first_line(exc)})",
                              target=target.name, fix="set input.batch to a fixed size (e.g. 1) in the profile") from None
        raise converter_failed("litert-torch conversion", exc, carrier, target) from None


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep litert-torch's progress lines, C++ (absl) logs and warnings off the console.

    The C++ side writes to file descriptors 1 and 2 directly, so those are redirected, not just
    sys.stdout/sys.stderr; what was printed is dropped (failures are reported by the exception).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


EXPORTERS.add("tflite", TfliteExporter)
