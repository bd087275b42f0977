"""Read a Core ML artifact's quantized tensors with edgeforge's reference interpreter.

Core ML has no Linux runtime; the numpy reference interpreter (``edgeforge.coreml``) is what a
Core ML artifact is validated with here, so the probe reads the int8 codes of each MIL
``quantize`` op from that interpreter. Each layer is fed the carrier's codes for its inputs (the
interpreter's ``replace``), so a row measures that layer alone: the program runs fp16 between ops,
and its 1-LSB rounding flips compound with depth (on the Fashion-MNIST student, fed its own values,
the 20th layer had 25% of values > 1 LSB off at SQNR 26 dB; fed the carrier's, every layer was
within 1 LSB), which would otherwise name a layer that is not wrong.

Which MIL op holds a carrier node comes from coremltools' own op mapping
(``convert_and_retrieve_op_mapping``: the carrier is converted again as the exporter converts it, and
every FX node is mapped to the MIL ops made from it). coremltools emits a node's ``quantize`` op
where the ``dequantize`` consuming it is converted, so the op is looked for on the node and then on
its dequantize users. The mapped op's output name is looked up in the artifact; an artifact written
by another conversion (other names) is paired by the op's position among the activation quantize
ops, when both programs have as many.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EdgeforgeError, require
from .carrier_nodes import QuantNode
from .match import Tensor
from .report import ProbeResult, fixed_batches

if TYPE_CHECKING:
    import torch

    from ..coreml import Program, ReferenceInterpreter
    from ..targets import TargetProfile

_DEQUANTIZE = ("dequantize_per_tensor",)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools prints progress bars and version warnings on every conversion."""
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _op_mapping(carrier: torch.fx.GraphModule, target: TargetProfile,
                shape: tuple[int, ...]) -> tuple[dict[str, list[Any]], list[str]]:
    """FX node name -> the MIL ops coremltools made from it, converting the carrier as the exporter does;
    and the converted program's activation quantize outputs in program order."""
    import torch

    ct = require("coremltools", "coreml")
    from coremltools.models.ml_program.experimental.torch.debugging_utils import convert_and_retrieve_op_mapping

    from ..exporters.coreml import fill_default_args

    opts = target.coreml
    with _quiet():
        ep = fill_default_args(torch.export.export(carrier, (torch.zeros(shape),)).run_decompositions({}))
        ml, mapping = convert_and_retrieve_op_mapping(
            ep, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, opts.minimum_deployment_target),
            inputs=[ct.TensorType(name=opts.input_name, shape=shape)],
            outputs=[ct.TensorType(name=opts.output_name, dtype=np.float32)],
            compute_precision=ct.precision.FLOAT16, skip_model_load=True)
    users = {n.name: [u.name for u in n.users if getattr(u.target, "__name__", "").startswith(_DEQUANTIZE)]
             for n in ep.graph_module.graph.nodes}
    ops = {n.name: list(mops) for n, mops in mapping.node_to_operations_map.items()}
    merged = {name: ops.get(name, []) + [op for u in users[name] for op in ops.get(u, [])] for name in users}
    return merged, _activation_quantizes(_spec_lines(ml.get_spec()))


OpLine = tuple[str, list[str], str]  # (MIL op type, names its 'input' reads, its first output)


def _activation_quantizes(ops: list[OpLine]) -> list[str]:
    """Output names of the quantize ops whose input is computed at run time (not a constant), in program order."""
    consts = {out for kind, _, out in ops if kind == "const" or kind.startswith("constexpr_")}
    return [out for kind, ins, out in ops if kind == "quantize" and not set(ins) & consts]


def _program_lines(program: Program) -> list[OpLine]:
    return [(op.type, [ref for kind, ref in op.inputs.get("input", []) if kind == "name"],
             op.outputs[0][0] if op.outputs else "") for op in program.ops]


def _spec_lines(spec: Any) -> list[OpLine]:
    fn = spec.mlProgram.functions["main"]
    lines = []
    for op in fn.block_specializations[fn.opset].operations:
        arg = op.inputs.get("input")
        ins = [a.name for a in arg.arguments if a.WhichOneof("binding") == "name"] if arg is not None else []
        lines.append((op.type, ins, op.outputs[0].name if op.outputs else ""))
    return lines


def _mapped_outputs(nodes: list[QuantNode], mapping: dict[str, list[Any]]) -> dict[str, str]:
    out = {}
    for n in nodes:
        op = next((o for o in mapping.get(n.name, []) if o.type == "quantize"), None)
        if op is not None:
            out[n.name] = op.outputs[0].name
    return out


def match_coreml(nodes: list[QuantNode], mapped: dict[str, str], converted: list[str],
                 artifact: list[str]) -> dict[str, str]:
    """Carrier node -> the artifact's quantize output: by the mapped name, else by position (equal counts)."""
    by_position = dict(zip(converted, artifact, strict=True)) if len(converted) == len(artifact) else {}
    present = set(artifact)
    out = {}
    for n in nodes:
        name = mapped.get(n.name)
        if name in present:
            out[n.name] = name
        elif name in by_position:
            out[n.name] = by_position[name]
    return out


def _tensor(interp: ReferenceInterpreter, program: Program, output: str, node: QuantNode) -> Tensor:
    """The artifact's quantize op as a tensor on the carrier's grid: its codes, its zero point, the node's scale.

    The codes are dequantized with the carrier's scale, not the op's: a quantize op with a wrong scale
    then shows at its own node (its codes differ), and the op's fp16-rounded scale adds no error.
    """
    op = next(o for o in program.ops if o.outputs and o.outputs[0][0] == output)
    refs = op.inputs.get("zero_point") or [("value", 0)]
    kind, ref = refs[0]
    zero_point = int(np.asarray(interp.constant(ref) if kind == "name" else ref).reshape(()))
    return Tensor(op.name, output, node.scale, zero_point)


def _carrier_codes(ref: np.ndarray, t: Tensor, shape: tuple[int | None, ...] | None) -> np.ndarray:
    """The carrier's tensor as this quantize op's codes (its zero point, in the program's shape)."""
    codes = np.rint(ref / t.scale) + t.zero_point
    return codes.reshape([int(d) if d is not None else -1 for d in shape]) if shape else codes


def _read(interp: ReferenceInterpreter, target: TargetProfile, pairs: dict[str, Tensor], x: np.ndarray,
          ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each paired quantize op's output, every layer fed the carrier's codes (``replace``): a layer's error
    is its own, not what fp16 rounding accumulated upstream (Core ML's fp16 between ops adds 1-LSB
    flips that compound with depth: 25% of values > 1 LSB by the 20th layer of the Fashion-MNIST student)."""
    from ..runtimes.coreml import _to_pixels

    batch = interp.input_type.shape[0] if interp.input_type.shape else None
    shapes = {name: tt.shape for op in interp.program.ops for name, tt in op.outputs}
    keep = [str(t.key) for t in pairs.values()]
    got: dict[str, list[np.ndarray]] = {n: [] for n in pairs}
    for (chunk, n), (rows, _) in zip(fixed_batches(x, batch), fixed_batches(np.arange(len(x)), batch), strict=True):
        feed = _to_pixels(chunk, target) if target.coreml.input_type == "image" else chunk
        forced = {str(t.key): _carrier_codes(ref[name][rows], t, shapes.get(str(t.key))) for name, t in pairs.items()}
        env = interp.run(np.ascontiguousarray(feed, dtype=np.float32), keep=keep, replace=forced)
        for name, t in pairs.items():
            got[name].append((env[str(t.key)][:n].astype(np.float64) - t.zero_point) * t.scale)
    return {k: np.concatenate(v) for k, v in got.items()}


def probe_coreml(path: Path, target: TargetProfile, carrier: torch.fx.GraphModule, nodes: list[QuantNode],
                 x: np.ndarray, ref: dict[str, np.ndarray]) -> ProbeResult:
    from ..coreml import ReferenceInterpreter

    interp = ReferenceInterpreter(path)
    program = interp.program
    shape = tuple(int(d or 1) for d in interp.input_type.shape or (1, *x.shape[1:]))
    mapping, converted = _op_mapping(carrier, target, shape)
    pairs = match_coreml(nodes, _mapped_outputs(nodes, mapping), converted,
                         _activation_quantizes(_program_lines(program)))
    if not pairs:
        raise EdgeforgeError(f"{path.name}: no quantize op of the program maps to a quantized node of the carrier")
    by_name = {n.name: n for n in nodes}
    tensors = {node: _tensor(interp, program, out, by_name[node]) for node, out in pairs.items()}
    values = _read(interp, target, tensors, np.asarray(x, dtype=np.float32), ref)
    kernels = ("edgeforge reference interpreter (numpy, fp16 between ops as the program declares), the runtime "
               "Core ML artifacts are validated with on Linux, not Core ML itself; each layer fed the carrier's "
               "int8 inputs, so a row is that layer's own error")
    return ProbeResult(values, {n: t.name for n, t in tensors.items()}, kernels)
