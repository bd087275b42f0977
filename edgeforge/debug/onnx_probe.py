"""Read an ONNX artifact's quantized tensors as onnxruntime computes them.

Making an intermediate a graph output stops onnxruntime from fusing the QDQ group around it
(DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv), so the numbers measured would not be
the shipped ones. Each tensor is read instead from a prefix sub-model cut at that tensor
(``onnx.utils.Extractor``), which ends in the same QuantizeLinear and fuses as the full model does;
it runs in the runtime adapter's own session (same options, threads and providers).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgeforgeError, require
from .carrier_nodes import QuantNode
from .match import match_onnx
from .report import ProbeResult

if TYPE_CHECKING:
    from ..targets import TargetProfile


def probe_onnx(path: Path, target: TargetProfile, nodes: list[QuantNode], x: np.ndarray) -> ProbeResult:
    onnx = require("onnx", "onnx")
    from ..runtimes.onnxruntime import OrtSession

    model = onnx.load(str(path))
    pairs = match_onnx(nodes, model)
    if not pairs:
        raise EdgeforgeError(f"{path.name}: no QuantizeLinear output matches a quantized node of the carrier")
    # strip_debug_info dropped value_info; the extractor needs the cut tensors' types and shapes
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    source = model.graph.input[0].name
    values: dict[str, np.ndarray] = {}
    executor = ""
    with tempfile.TemporaryDirectory() as d:
        for name, t in pairs.items():
            prefix = Path(d) / f"prefix_{len(values)}.onnx"
            onnx.save(extractor.extract_model([source], [str(t.key)]), str(prefix))
            session = OrtSession(prefix, target)
            executor = session.executor
            codes = session.run_all(np.asarray(x, dtype=np.float32)).astype(np.float64)
            values[name] = (codes - t.zero_point) * t.scale
    kernels = f"{executor}, all graph optimisations (fused QDQ), prefix sub-model per tensor"
    return ProbeResult(values, {n: t.name for n, t in pairs.items()}, kernels)
