"""Read a TFLite artifact's quantized tensors in LiteRT.

Intermediates are kept with ``experimental_preserve_all_tensors``; inside a graph delegated to
XNNPACK they are never written, so the tensors are read with LiteRT's built-in kernels
(``BUILTIN_WITHOUT_DEFAULT_DELEGATES``). Those differ from XNNPACK's by 1-2 LSB here and there: the
probe also runs the shipped XNNPACK session and records how far its output is from the built-in
kernels' output, so a divergence that only XNNPACK shows is not missed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EdgeforgeError, require
from .carrier_nodes import QuantNode
from .match import Tensor, match_tflite
from .report import ProbeResult, fixed_batches

if TYPE_CHECKING:
    from ..targets import TargetProfile


def _nchw_tensors(it: Any, ops: list[dict[str, Any]], input_layout: str) -> set[int]:
    """4-D tensors held NCHW: an NCHW graph input and what (de)quantize ops make of it; TFLite's
    kernels keep every other 4-D activation NHWC."""
    nchw = {int(d["index"]) for d in it.get_input_details()} if input_layout == "NCHW" else set()
    for op in ops:
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") and int(op["inputs"][0]) in nchw:
            nchw.update(int(o) for o in op["outputs"])
    return nchw


def _read(session: Any, pairs: dict[str, Tensor], x: np.ndarray, nchw: set[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    got: dict[str, list[np.ndarray]] = {n: [] for n in pairs}
    logits = []
    it = session.interpreter
    for chunk, n in fixed_batches(x, session.fixed_batch):
        logits.append(session.run(chunk)[:n])
        for name, t in pairs.items():
            codes = it.get_tensor(int(t.key))[:n].astype(np.float64)
            if codes.ndim == 4 and int(t.key) not in nchw:
                codes = codes.transpose(0, 3, 1, 2)
            got[name].append((codes - t.zero_point) * t.scale)
    return {k: np.concatenate(v) for k, v in got.items()}, np.concatenate(logits)


def probe_tflite(path: Path, target: TargetProfile, nodes: list[QuantNode], x: np.ndarray,
                 sizes: dict[str, int]) -> ProbeResult:
    interp = require("ai_edge_litert.interpreter", "tflite")
    from ..runtimes.litert import LiteRTSession

    x = np.asarray(x, dtype=np.float32)
    builtin = LiteRTSession(path, target, experimental_preserve_all_tensors=True,
                            experimental_op_resolver_type=interp.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it = builtin.interpreter
    inputs = [int(d["index"]) for d in it.get_input_details()]
    ops = it._get_ops_details()
    pairs = match_tflite(nodes, sizes, it.get_tensor_details(), ops, inputs)
    if not pairs:
        raise EdgeforgeError(f"{path.name}: no int8 tensor matches a quantized node of the carrier (scale, size)")
    values, ref_logits = _read(builtin, pairs, x, _nchw_tensors(it, ops, target.input.layout))
    shipped = LiteRTSession(path, target).run_all(x)
    off = float(np.abs(shipped - ref_logits).max()) / nodes[-1].scale if len(x) else 0.0  # in the logits' LSBs
    kernels = (f"LiteRT built-in kernels (XNNPACK off: a delegated graph keeps no intermediates); the shipped "
               f"XNNPACK session's output differs from theirs by at most {off:.1f} LSB")
    return ProbeResult(values, {n: t.name for n, t in pairs.items()}, kernels)
