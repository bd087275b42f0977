"""The layer report: each quantized carrier node against the artifact's tensor, first divergence named.

Divergence rule (``Thresholds``): a node diverges when more than ``max_share_over_1lsb`` (1%) of
its values differ from the carrier's by more than one LSB of the node's output scale, or its SQNR
falls below ``min_sqnr_db`` (30 dB). One-LSB differences are rounding (a fused kernel's fixed-point
requantization against the carrier's float math, XNNPACK vs reference kernels) and never count;
an exact int8 layer with a few rounding flips sits near 40 dB and above, a wrong scale or a
saturating kernel far below.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgeforgeError
from .carrier_nodes import QuantNode, carrier_values, quantized_nodes

if TYPE_CHECKING:
    import torch

    from ..targets import TargetProfile


@dataclass(frozen=True)
class Thresholds:
    max_share_over_1lsb: float = 0.01
    min_sqnr_db: float = 30.0


@dataclass
class ProbeResult:
    """What a format probe read: carrier node name -> the artifact's tensor (dequantized, NCHW)."""

    values: dict[str, np.ndarray]
    tensors: dict[str, str]  # carrier node name -> the artifact's tensor name
    kernels: str  # which kernels computed the tensors (they differ by 1-2 LSB between backends)


@dataclass
class NodeRow:
    index: int
    node: str
    module: str
    op: str
    scale: float
    tensor: str | None  # the artifact's tensor; None when the artifact has no such tensor
    sqnr_db: float | None = None
    cosine: float | None = None
    max_lsb: float | None = None
    share_over_1lsb: float | None = None
    diverged: bool = False

    def metric_text(self) -> str:
        if self.tensor is None or self.sqnr_db is None:
            return "no matching tensor in the artifact"
        sqnr = "inf" if math.isinf(self.sqnr_db) else f"{self.sqnr_db:.1f}"
        return (f"SQNR {sqnr} dB, cosine {self.cosine:.4f}, max {self.max_lsb:.1f} LSB, "
                f"{100 * (self.share_over_1lsb or 0.0):.1f}% of values > 1 LSB")


@dataclass
class LayerReport:
    target: str
    format: str
    artifact: str
    inputs: int
    kernels: str
    thresholds: Thresholds
    rows: list[NodeRow] = field(default_factory=list)

    @property
    def first_divergent(self) -> NodeRow | None:
        return next((r for r in self.rows if r.diverged), None)

    def to_json(self) -> str:
        from ..records import json_safe

        first = self.first_divergent
        doc = {**asdict(self), "first_divergent": first.node if first else None}
        return json.dumps(json_safe(doc), indent=2)

    def to_text(self) -> str:
        head = ("#", "node", "module", "op", "tensor", "SQNR dB", "cosine", "max LSB", ">1 LSB", "")
        rows = [head]
        for r in self.rows:
            cells = ("-",) * 4 if r.sqnr_db is None else (
                "inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}", f"{r.cosine:.4f}", f"{r.max_lsb:.1f}",
                f"{100 * (r.share_over_1lsb or 0.0):.1f}%")
            rows.append((str(r.index), r.node, r.module or "-", r.op, (r.tensor or "-")[:40], *cells,
                         "DIVERGES" if r.diverged else ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"layer report: {self.target} ({self.format}, {self.artifact}) vs the QAT carrier on "
                 f"{self.inputs} test inputs; kernels: {self.kernels}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        first = self.first_divergent
        t = self.thresholds
        rule = f"> {100 * t.max_share_over_1lsb:g}% of values off by > 1 LSB or SQNR < {t.min_sqnr_db:g} dB"
        if first is None:
            return f"no node diverges ({rule})"
        return f"first divergent node: {first.node} ({first.module or 'top module'}, {first.op}): {first.metric_text()}"


def fixed_batches(x: np.ndarray, batch: int | None) -> list[tuple[np.ndarray, int]]:
    """(chunk, real rows) in batches of a file's fixed size (the last padded), or of 16 for a dynamic batch."""
    step = batch or 16
    out = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if batch and n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        out.append((chunk, n))
    return out


def to_carrier_layout(art: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The artifact's tensor in the carrier's shape (channel-last files hold NHWC activations)."""
    if art.shape == ref.shape:
        return art
    if art.ndim == 4 and art.shape == (ref.shape[0], *ref.shape[2:], ref.shape[1]):
        return art.transpose(0, 3, 1, 2)
    if art.size == ref.size:
        return art.reshape(ref.shape)
    raise EdgeforgeError(f"artifact tensor of shape {art.shape} cannot be compared with the carrier's {ref.shape}")


def compare(row: NodeRow, art: np.ndarray, ref: np.ndarray, t: Thresholds) -> None:
    a = to_carrier_layout(art, ref).astype(np.float64).ravel()
    c = ref.astype(np.float64).ravel()
    err = a - c
    noise, signal = float(np.sum(err * err)), float(np.sum(c * c))
    row.sqnr_db = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    na, nc = float(np.linalg.norm(a)), float(np.linalg.norm(c))
    row.cosine = 1.0 if na == nc == 0 else (float(a @ c) / (na * nc) if na and nc else 0.0)
    lsb = np.abs(err) / row.scale
    row.max_lsb = float(lsb.max()) if lsb.size else 0.0
    # 1 LSB plus a hair: a code one step off, dequantized with a float32 scale, is 1.0000001 LSB
    row.share_over_1lsb = float(np.mean(lsb > 1.0 + 1e-3)) if lsb.size else 0.0
    row.diverged = row.share_over_1lsb > t.max_share_over_1lsb or row.sqnr_db < t.min_sqnr_db


# Formats the layer report cannot read yet, and why (listed as "not probed: <reason>", never left out).
NOT_PROBED = {
    "executorch": "the XNNPACK delegate runs the whole int8 graph as one delegate call; ExecuTorch's ETDump "
                  "records delegate outputs and profiling events, not the tensors inside it, and a prefix "
                  "program per node (as for ONNX) is not built yet",
}


class NotProbed(EdgeforgeError):
    """The target's format has no layer probe; the message says why."""


def _probe(fmt: str, path: Path, target: TargetProfile, carrier: torch.fx.GraphModule, nodes: list[QuantNode],
           x: np.ndarray, ref: dict[str, np.ndarray]) -> ProbeResult:
    if fmt == "onnx":
        from .onnx_probe import probe_onnx

        return probe_onnx(path, target, nodes, x)
    if fmt == "tflite":
        from .tflite_probe import probe_tflite

        return probe_tflite(path, target, nodes, x, {k: int(np.prod(v.shape[1:])) for k, v in ref.items()})
    if fmt == "coreml":
        from .coreml_probe import probe_coreml

        return probe_coreml(path, target, carrier, nodes, x, ref)
    raise NotProbed(f"{fmt}: not probed: the layer report reads onnx, tflite and coreml artifacts")


def layer_report(carrier: torch.fx.GraphModule, artifact: Path, target: TargetProfile, x: np.ndarray, *,
                 thresholds: Thresholds | None = None) -> LayerReport:
    """Compare every quantized node of ``carrier`` with ``artifact``'s tensor on inputs ``x`` (NCHW float32)."""
    if target.precision != "int8":
        raise EdgeforgeError(f"target {target.name} is {target.precision}; the layer report compares int8 artifacts")
    if target.format in NOT_PROBED:  # said before the carrier runs: there is nothing to compare it with
        raise NotProbed(f"{target.format}: not probed: {NOT_PROBED[target.format]}")
    t = thresholds or Thresholds()
    nodes = quantized_nodes(carrier)
    if not nodes:
        raise EdgeforgeError("the carrier has no quantized nodes; is it the converted QAT graph (student_qat.pt2)?")
    ref = carrier_values(carrier, nodes, x)
    got = _probe(target.format, artifact, target, carrier, nodes, x, ref)
    report = LayerReport(target.name, target.format, artifact.name, len(x), got.kernels, t)
    for i, n in enumerate(nodes):
        row = NodeRow(i, n.name, n.module, n.op, n.scale, got.tensors.get(n.name))
        if n.name in got.values:
            compare(row, got.values[n.name], ref[n.name], t)
        report.rows.append(row)
    return report
