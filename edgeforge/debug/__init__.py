"""Layer-by-layer numerics of an int8 artifact against its QAT carrier (``edgeforge debug``).

``carrier_nodes`` lists the carrier's quantized tensors and computes them; ``match`` pairs them
with an artifact's tensors; ``onnx_probe`` / ``tflite_probe`` read those tensors in the format's
own runtime; ``report`` compares, names the first divergent node and renders text and JSON.
Heavy frameworks are imported inside the probes only.
"""

from __future__ import annotations

from .build_dir import debug_build
from .report import LayerReport, NodeRow, Thresholds, layer_report

__all__ = ["LayerReport", "NodeRow", "Thresholds", "debug_build", "layer_report"]
