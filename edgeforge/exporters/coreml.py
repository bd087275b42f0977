"""Core ML exporter: an ML program (.mlpackage) in fp32 / fp16 from the float student, or W8A8 from
the QAT carrier (its quantize/dequantize ops and learned scales carried over, not re-calibrated).
fp32 / fp16 programs can have their conv/linear weights compressed (coreml.weights: int8 linear or
k-means palettes) with coremltools.optimize.coreml; activations stay float.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from ..carrier import Carrier
from ..errors import ExportError, require
from ..inputs import format_dtype
from ..targets import TargetProfile
from .base import EXPORTERS, ExportedArtifact, Exporter, converter_failed

if TYPE_CHECKING:
    from ..config import ValidationConfig

CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"


def fill_default_args(ep: Any) -> Any:
    """Write every omitted schema default into the ATen calls of an ExportedProgram, in place.

    torch.export drops arguments equal to their defaults (``max_pool2d(x, [2, 2])``), and
    coremltools 9.0's torch frontend counts positional inputs ("max_pool2d got 2 input(s),
    expected minimum 3"); spelling the defaults out is semantically a no-op. Its gelu converter
    also reads only positional inputs, so ``approximate="tanh"`` (keyword-only) silently became an
    exact GELU (found by the reference interpreter: 5e-4 off); that GELU is spelled out in ATen ops.
    """
    for node in ep.graph_module.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target == torch.ops.aten.gelu.default and node.kwargs.get("approximate") == "tanh":
            _spell_out_tanh_gelu(ep.graph_module.graph, node)
            continue
        positional = [a for a in node.target._schema.arguments if not a.kwarg_only]
        extra = []
        for arg in positional[len(node.args):]:
            if arg.name in node.kwargs or not arg.has_default_value():
                break
            extra.append(arg.default_value)
        if extra:
            node.args = (*node.args, *extra)
    ep.graph_module.recompile()
    return ep


def _spell_out_tanh_gelu(graph: Any, node: Any) -> None:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) in place of gelu(x, approximate="tanh")."""
    aten = torch.ops.aten
    x = node.args[0]
    with graph.inserting_before(node):
        def call(op: Any, *args: Any) -> Any:
            n = graph.call_function(op, args)
            n.meta = {k: v for k, v in node.meta.items() if k != "val"} | {"val": node.meta.get("val")}
            return n

        cube = call(aten.mul.Tensor, call(aten.mul.Tensor, x, x), x)
        inner = call(aten.add.Tensor, x, call(aten.mul.Tensor, cube, 0.044715))
        t = call(aten.tanh.default, call(aten.mul.Tensor, inner, math.sqrt(2 / math.pi)))
        half, one_plus = call(aten.mul.Tensor, x, 0.5), call(aten.add.Tensor, t, 1.0)
    # The gelu node itself becomes the last multiply: its name is what the program's signature outputs.
    node.target, node.args, node.kwargs = aten.mul.Tensor, (half, one_plus), {}


def op_histogram(spec: Any) -> dict[str, int]:
    fn = spec.mlProgram.functions["main"]
    ops: dict[str, int] = {}
    for op in fn.block_specializations[fn.opset].operations:
        ops[op.type] = ops.get(op.type, 0) + 1
    return dict(sorted(ops.items()))


# Weight-only compression: conv/linear weight tensors with more than this many elements are compressed.
# coremltools' default (2048) skips much of a small student (the digits convnet's 640-weight classifier);
# below ~256 elements the saving (< 512 B of fp16) is eaten by the extra lut/scale blob and weight.bin's
# 64-byte metadata + alignment per blob. Biases (rank 1) are never compressed by coremltools.
WEIGHT_THRESHOLD = 256
WEIGHT_MODES = {
    "int8": "linear_symmetric int8, per output channel",
    "palette4": "k-means palette, 16 entries (4-bit indices), per tensor",
    "palette6": "k-means palette, 64 entries (6-bit indices), per tensor",
}
COMPRESSION_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")


def compress_weights(ml: Any, weights: str) -> Any:
    """The same program with its conv/linear weights compressed (a new MLModel); ``weights`` from WEIGHT_MODES.

    iOS16/17 programs get constexpr_affine_dequantize / constexpr_lut_to_dense (indices bit-packed in
    uint8, one flat lut); iOS18 programs constexpr_blockwise_shift_scale / constexpr_lut_to_dense
    (uint4/uint6 indices in the weight's shape, lut of rank + 2).
    """
    import coremltools.optimize.coreml as cto

    if weights == "int8":
        cfg: Any = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                               weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.linear_quantize_weights
    else:
        cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=int(weights.removeprefix("palette")),
                                     granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.palettize_weights
    return fn(ml, cto.OptimizationConfig(op_type_configs={"conv": cfg, "linear": cfg}))


def input_names(carrier: Carrier, target: TargetProfile) -> list[str]:
    """One input keeps the profile's name (coreml.input_name); several keep the model's own names."""
    return [target.coreml.input_name] if len(carrier.inputs) == 1 else [s.name for s in carrier.inputs]


def _input_types(ct: Any, carrier: Carrier, target: TargetProfile) -> list[Any]:
    """One ct input type per model input. Core ML has no int64 inputs: int64 ids are declared int32."""
    batch = int(target.input.batch)
    if len(carrier.inputs) == 1 and carrier.inputs[0].is_float:
        return [_input_type(ct, carrier, target, (batch, *carrier.inputs[0].shape))]
    if target.coreml.input_type == "image":
        raise ExportError("coreml.input_type: image needs a model with a single float image input, this one takes "
                          f"{', '.join(f'{s.name} ({s.dtype})' for s in carrier.inputs)}", target=target.name,
                          key="coreml.input_type", fix="set coreml.input_type: tensor")
    return [ct.TensorType(name=name, shape=(batch, *s.shape), dtype=np.dtype(format_dtype(s, "coreml")).type)
            for name, s in zip(input_names(carrier, target), carrier.inputs, strict=True)]


def _input_type(ct: Any, carrier: Carrier, target: TargetProfile, shape: tuple[int, ...]) -> Any:
    opts = target.coreml
    if opts.input_type == "tensor":
        return ct.TensorType(name=opts.input_name, shape=shape)
    channels = shape[1]
    if channels not in (1, 3):
        raise ExportError(f"target {target.name}: an image input needs 1 or 3 channels, the model takes {channels}; "
                          "set coreml.input_type: tensor")
    bias = list(opts.image_bias)
    if len(bias) not in (1, channels):
        raise ExportError(f"target {target.name}: coreml.image_bias has {len(bias)} values; give 1 or {channels}")
    bias = bias * channels if len(bias) == 1 else bias
    layout = ct.colorlayout.GRAYSCALE if channels == 1 else ct.colorlayout.RGB
    return ct.ImageType(name=opts.input_name, shape=shape, scale=opts.image_scale,
                        bias=bias[0] if channels == 1 else bias, color_layout=layout)


class CoremlExporter(Exporter):
    format = "coreml"
    suffix = ".mlpackage"
    extra = "coreml"
    packages = ("coremltools",)

    def parity_atol(self, target: TargetProfile, validation: ValidationConfig) -> float | None:
        if target.coreml.weights != "float":
            return None  # compressed weights change the logits by design: judged by drift and agreement
        return super().parity_atol(target, validation)

    def check_target(self, target: TargetProfile) -> None:
        super().check_target(target)
        opts = target.coreml
        if target.input.batch == "dynamic":
            raise ExportError("Core ML targets need a static batch (the Neural Engine runs only static shapes; a "
                              "flexible shape falls back to CPU/GPU)", target=target.name, fix="set input.batch: 1")
        if target.input.layout != "NCHW" or target.input.dtype != "float32":
            raise ExportError("the Core ML exporter takes NCHW float32 models", target=target.name,
                              fix="set input.layout: NCHW, input.dtype: float32 (use coreml.input_type: image for pixels)")
        if target.precision == "int8" and opts.weights != "float":
            raise ExportError(f"coreml.weights: {opts.weights} is for fp16/fp32 programs; precision int8 (W8A8) "
                              "already stores int8 weights", target=target.name, fix="drop coreml.weights or use fp16")
        if target.precision == "int8" and opts.minimum_deployment_target == "iOS16":
            raise ExportError("W8A8 needs the iOS17 opset (activation quantize/dequantize ops)", target=target.name,
                              fix="set coreml.minimum_deployment_target: iOS17 or later")

    def export(self, carrier: Carrier, target: TargetProfile, path: Path) -> ExportedArtifact:
        ct = require("coremltools", "coreml")
        self.check_target(target)
        if target.precision == "int8" and carrier.quantized is None:
            raise ExportError("int8 needs the QAT carrier, which this build did not produce", target=target.name)
        shape = (int(target.input.batch), *carrier.inputs[0].shape)
        ml = _convert(ct, carrier, target)
        ops = op_histogram(ml.get_spec())
        compression = _compression_record(ops, target)
        if target.precision == "int8" and not {"quantize", "dequantize"} <= set(ops):
            raise ExportError("the converted program has no quantize/dequantize ops; the QAT scales were lost",
                              target=target.name)
        _describe(ml, carrier, target, shape, compression is not None)
        _save_atomic(ml, path)
        opts, spec = target.coreml, ml.get_spec()
        return ExportedArtifact(path, self.format, target.precision, {
            "ops": ops,
            "opset": spec.mlProgram.functions["main"].opset,
            "minimum_deployment_target": opts.minimum_deployment_target,
            "compute_precision": "fp32" if target.precision == "fp32" else "fp16",
            "weight_compression": compression,
            "specification_version": spec.specificationVersion,
            "input": {"name": input_names(carrier, target)[0], "type": opts.input_type, "layout": "NCHW",
                      "shape": list(shape)},
            "inputs": [{"name": n, "dtype": format_dtype(s, "coreml"), "shape": [int(target.input.batch), *s.shape]}
                       for n, s in zip(input_names(carrier, target), carrier.inputs, strict=True)],
            "output": {"name": opts.output_name, "dtype": "float32"},
            "exporter": f"coremltools {ct.__version__} (torch.export {torch.__version__})",
            "package": "byte-reproducible (item ids from paths, sorted metadata, no conversion date); "
                       "digest over sorted relative paths and file contents",
        })


def _convert(ct: Any, carrier: Carrier, target: TargetProfile) -> Any:
    opts = target.coreml
    model: torch.nn.Module = carrier.quantized if target.precision == "int8" else carrier.float_model.eval()  # type: ignore[assignment]
    # int8 runs its float segments in fp16, as the Neural Engine does; fp32 stays fp32 end to end.
    precision = ct.precision.FLOAT32 if target.precision == "fp32" else ct.precision.FLOAT16
    stage = "convert"
    try:
        examples = carrier.examples(int(target.input.batch))
        ep = fill_default_args(torch.export.export(model, examples).run_decompositions({}))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), _quiet_coremltools():
            warnings.simplefilter("ignore")
            ml = ct.convert(
                ep, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, opts.minimum_deployment_target),
                inputs=_input_types(ct, carrier, target),
                # float32 out whatever the compute precision: consumers get logits as float32.
                outputs=[ct.TensorType(name=opts.output_name, dtype=np.float32)],
                compute_precision=precision, skip_model_load=True,
            )
            if opts.weights != "float":
                stage = f"compress ({opts.weights} weights)"
                ml = compress_weights(ml, opts.weights)
    except ExportError:
        raise
    except Exception as exc:
        raise converter_failed(f"coremltools ({stage})", exc, carrier, target) from None
    return ml


def _compression_record(ops: dict[str, int], target: TargetProfile) -> dict[str, Any] | None:
    weights = target.coreml.weights
    if weights == "float":
        return None
    compressed = sum(ops.get(op, 0) for op in COMPRESSION_OPS)
    if not compressed:
        raise ExportError(f"coreml.weights: {weights} compressed nothing (no conv/linear weight has more than "
                          f"{WEIGHT_THRESHOLD} elements)", target=target.name, fix="use weights: float")
    return {"weights": weights, "method": WEIGHT_MODES[weights], "weight_threshold": WEIGHT_THRESHOLD,
            "compressed_tensors": compressed, "tool": "coremltools.optimize.coreml"}


def _describe(ml: Any, carrier: Carrier, target: TargetProfile, shape: tuple[int, ...], compressed: bool) -> None:
    opts = target.coreml
    ml.author = "edgeforge"
    ml.version = __version__
    ml.license = ""
    ml.short_description = (f"{carrier.name}: {carrier.num_classes}-class classifier, {target.precision}"
                            + (f", {opts.weights} weights" if compressed else "") + f" (edgeforge target {target.name})")
    if len(carrier.inputs) == 1 and carrier.inputs[0].is_float:
        ml.input_description[opts.input_name] = f"NCHW {shape}" + (" image" if opts.input_type == "image" else " float32")
    else:
        for name, s in zip(input_names(carrier, target), carrier.inputs, strict=True):
            kind = "token ids" if s.vocab_size else ("mask" if not s.is_float else "features")
            ml.input_description[name] = f"{kind}, {format_dtype(s, 'coreml')} {[int(target.input.batch), *s.shape]}"
    ml.output_description[opts.output_name] = "logits (float32), one per class in class_labels"
    ml.user_defined_metadata.update({
        "class_labels": ",".join(carrier.class_names), "edgeforge.target": target.name,
        "edgeforge.precision": target.precision, "edgeforge.model": carrier.name, "edgeforge.weights": opts.weights,
    })


@contextlib.contextmanager
def _quiet_coremltools() -> Any:
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _make_reproducible(package: Path) -> None:
    """Rewrite what ml.save randomises, so equal programs give equal bytes (a resumed build's digest).

    Also drops the debug file that is not part of the model.

    coremltools 9 writes random item UUIDs into Manifest.json, serialises the metadata map in hash
    order and stamps the conversion date: the same program hashed differently after a rerun.
    """
    from coremltools.proto import Model_pb2

    # Not part of the model (Manifest.json does not list it): ExecuTorch's debug-handle map, which
    # coremltools writes beside the program. It tripled the W8A8 package of a 23k-parameter student.
    (package / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
    manifest = package / "Manifest.json"
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    items = doc.get("itemInfoEntries", {})
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgeforge:{item.get('path')}")) for old, item in items.items()}
    doc["itemInfoEntries"] = {ids[old]: item for old, item in items.items()}
    root = doc.get("rootModelIdentifier")
    doc["rootModelIdentifier"] = ids.get(root, root)
    manifest.write_text(json.dumps(doc, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    spec_file = package / "Data" / items.get(root, {}).get("path", "com.apple.CoreML/model.mlmodel")
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    meta = spec.description.metadata.userDefined
    if CONVERSION_DATE in meta:
        del meta[CONVERSION_DATE]
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))


def _save_atomic(ml: Any, path: Path) -> None:
    """Build the package in a sibling temp folder, then rename it into place (a package is a folder).

    The temp folder is named .<name>.tmp-<pid> so the next build can remove it if this one is killed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        built = staging / "model.mlpackage"
        ml.save(str(built))
        _make_reproducible(built)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(built, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

EXPORTERS.add("coreml", CoremlExporter)
