"""ExecuTorch exporter: .pte programs lowered to XNNPACK, fp32 from the float student, int8 from the QAT carrier.

torch.export (static batch) -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner ->
``to_executorch``. The int8 program is the carrier's converted PT2E graph as it is: XNNPACK takes
its quantize/dequantize pairs as int8 tensors with the scales learned in QAT (never re-calibrated).
Whatever the partitioner leaves out runs in ExecuTorch's portable kernels; in an int8 program such
an op computes in float between two delegate calls, so it is listed as a float island.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata as md
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ..carrier import Carrier
from ..errors import ExportError, require
from ..quant.weight_codes import symmetric_weights
from ..records import Check
from ..schema import Strict
from ..targets import TargetProfile
from .base import EXPORTERS, ExportedArtifact, Exporter, converter_failed, first_line

aten = torch.ops.aten
_BOOKKEEPING = {"getitem"}  # tuple unpacking of a delegate's outputs, no kernel


class ExecutorchOptions(Strict):
    """The profile's ``executorch:`` section."""

    backend: Literal["xnnpack", "portable"] = Field(
        "xnnpack", description="xnnpack: lower to the XNNPACK delegate (CPU, fp32 and int8); portable: no "
        "delegate, ExecuTorch's reference kernels only (fp32; slow, but runs anywhere ExecuTorch runs)")
    allow_portable_ops: bool = Field(
        False, description="accept ops XNNPACK did not take in an int8 program (they run in float in the "
        "portable kernels between delegate calls)")
    adb_runner: str = Field(
        "/data/local/tmp/xnn_executor_runner", description="ExecuTorch's executor_runner built with XNNPACK, "
        "pushed to the Android device, for latency.measured_on: adb")


def options_for(target: TargetProfile) -> ExecutorchOptions:
    return target.format_options(ExecutorchOptions)


def keepdim_global_means(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``mean(x, (2, 3))`` on 4-D tensors as ``flatten(mean(x, (2, 3), keepdim=True), 1)``.

    XNNPACK lowers a mean only as global average pooling with keepdim=True (ExecuTorch 1.5.1's
    MeanDimConfig); edgeforge's students pool with ``x.mean((2, 3))``, which would leave the pooling
    in the portable kernels, in float, between two delegate calls. The rewrite computes the same
    numbers, so the scales of the carrier around it stay valid.
    """
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.mean.dim:
            continue
        x, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if keepdim or node.kwargs.get("dtype") is not None or not isinstance(val, torch.Tensor) or val.dim() != 4:
            continue
        if sorted(int(d) % 4 for d in dims) != [2, 3]:
            continue
        with graph.inserting_after(node):
            pooled = graph.call_function(aten.mean.dim, (x, [2, 3], True))
        with graph.inserting_after(pooled):
            flat = graph.call_function(aten.flatten.using_ints, (pooled, 1))
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done


def _op_name(target: Any) -> str:
    """``aten.convolution.default`` for edge-dialect and torch ops alike."""
    name = getattr(target, "__name__", None) or str(target)
    return str(name).removeprefix("aten::").replace("::", ".")


def delegation_summary(gm: torch.fx.GraphModule, backend: str) -> dict[str, Any]:
    """How much of a lowered program the delegate took, by op, and what stayed in portable kernels."""
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    by_module: dict[str, list[str]] = {}
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith("lowered_module"):
            subgraphs += 1
            lowered = getattr(gm, str(node.target))
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner.target) not in _BOOKKEEPING:
                    delegated[_op_name(inner.target)] += 1
        elif node.op == "call_function" and "executorch_call_delegate" not in str(node.target):
            name = _op_name(node.target)
            if name not in _BOOKKEEPING:
                portable[name] += 1
                ops = by_module.setdefault(_module_of(node), [])
                if name not in ops:
                    ops.append(name)
    return {
        "backend": backend,
        "delegated_subgraphs": subgraphs,
        "delegated_nodes": sum(delegated.values()),
        "portable_nodes": sum(portable.values()),
        "delegated_ops": dict(sorted(delegated.items())),
        "portable_ops": dict(sorted(portable.items())),
        "portable_by_module": dict(sorted(by_module.items())),
    }


def _module_of(node: torch.fx.Node) -> str:
    """The student's module an op was written in (``layers.0.norm1``), from torch.export's module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else "(top level)"


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class ExecutorchExporter(Exporter):
    format = "executorch"
    precisions = ("fp32", "int8")
    suffix = ".pte"
    extra = "executorch"
    packages = ("executorch",)
    options_model = ExecutorchOptions

    def check_target(self, target: TargetProfile) -> None:
        super().check_target(target)
        opts = options_for(target)
        if target.input.batch == "dynamic":
            # Seen with 1.5.1: a batch declared as Dim(max=64) was memory-planned for 15 and batch 1
            # was dropped from the range, so a "dynamic" program fails on ordinary batch sizes.
            raise ExportError("ExecuTorch plans every tensor's memory at export time and did not keep a dynamic "
                              "batch's range", target=target.name, key="input.batch",
                              fix="set input.batch to a fixed size (e.g. 1); edgeforge pads the last batch")
        if target.input.layout != "NCHW" or target.input.dtype != "float32":
            raise ExportError("the ExecuTorch exporter writes NCHW float32 inputs (XNNPACK converts the layout "
                              "itself)", target=target.name, key="input",
                              fix="set input.layout: NCHW and input.dtype: float32")
        if opts.backend == "portable" and target.precision == "int8":
            raise ExportError("the portable backend has no int8 kernels in ExecuTorch's runtime (quantize/"
                              "dequantize have no out variants there)", target=target.name, key="executorch.backend",
                              fix="use executorch.backend: xnnpack for int8, or precision fp32")

    def reference_model(self, carrier: Carrier, target: TargetProfile) -> torch.nn.Module:
        if target.precision == "int8":
            if carrier.quantized is None:
                raise ExportError("int8 needs the QAT carrier, which this build did not produce", target=target.name)
            # XNNPACK's qs8 conv / fully-connected kernels ignore a weight zero point (weight_codes).
            return symmetric_weights(carrier.quantized, target.name)
        return copy.deepcopy(carrier.float_model).eval()

    def export(self, carrier: Carrier, target: TargetProfile, path: Path) -> ExportedArtifact:
        self.check_target(target)
        exir = require("executorch.exir", "executorch")
        from . import float_layers  # imports the quantizer (torchao): only when exporting
        opts = options_for(target)
        examples = carrier.examples(int(target.input.batch))
        with _quiet_warnings():
            try:
                gm = torch.export.export(self.reference_model(carrier, target), examples).module()
                rewrites = keepdim_global_means(gm)
                ep = torch.export.export(gm, examples)
                with torch.no_grad():
                    out_shape = [int(v) for v in gm(*examples).shape]
            except ExportError:
                raise
            except Exception as exc:
                raise converter_failed("torch.export", exc, carrier, target) from None
            edge = self._lower(exir, ep, opts, carrier, target)
            summary = delegation_summary(edge.exported_program().graph_module, self._backend_id(opts))
            weights = float_layers.executorch_weights(edge.exported_program().graph_module)
            try:
                program = edge.to_executorch()
            except Exception as exc:
                raise ExportError(f"ExecuTorch could not emit the program: {first_line(exc)}", target=target.name,
                                  op=", ".join(summary["portable_ops"]) or None,
                                  fix="these ops need a kernel in ExecuTorch's portable library; change them "
                                      "in the student") from None
        path.write_bytes(program.buffer)
        version = md.version("executorch")
        info: dict[str, Any] = {
            "executorch": version,
            "backend": opts.backend,
            "delegation": summary,
            "weights": weights,  # conv/linear weights as lowered: int8 or float, by module
            "input": {"shape": list(examples[0].shape), "dtype": carrier.inputs[0].dtype, "layout": "NCHW",
                      "batch": target.input.batch},
            # A .pte program has no input names: sessions feed the inputs in this order.
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(x.shape)}
                       for s, x in zip(carrier.inputs, examples, strict=True)],
            "output": {"shape": out_shape, "dtype": "float32"},
            "rewrites": {"keepdim_global_mean": rewrites},
            "exporter": f"executorch {version} (to_edge_transform_and_lower, {summary['backend']}), "
                        f"torch {torch.__version__}",
        }
        if target.precision == "int8":
            info["float_islands"] = [f"{op} x{n}" for op, n in summary["portable_ops"].items()]
            info["float_islands_by_module"] = summary["portable_by_module"]
        return ExportedArtifact(path, self.format, target.precision, info)

    @staticmethod
    def _backend_id(opts: ExecutorchOptions) -> str:
        return "XnnpackBackend" if opts.backend == "xnnpack" else "portable"

    @staticmethod
    def _lower(exir: Any, ep: Any, opts: ExecutorchOptions, carrier: Carrier, target: TargetProfile) -> Any:
        partitioners: list[Any] = []
        if opts.backend == "xnnpack":
            xnn = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
            partitioners.append(xnn.XnnpackPartitioner())
        try:
            return exir.to_edge_transform_and_lower(ep, partitioner=partitioners)
        except Exception as exc:
            raise converter_failed(f"lowering to ExecuTorch ({opts.backend})", exc, carrier, target) from None

    def artifact_checks(self, info: dict[str, Any], target: TargetProfile) -> list[Check]:
        """An int8 program should run entirely in the delegate: a portable op computes in float."""
        if target.precision != "int8":
            return []
        islands = info.get("float_islands") or []
        allowed = options_for(target).allow_portable_ops
        names = ", ".join(islands)
        if not islands:
            message = "XNNPACK runs every op of the int8 program"
        elif allowed:
            message = f"{names} run in float in the portable kernels, as executorch.allow_portable_ops allows"
        else:
            message = (f"{names} stay outside XNNPACK and run in float between delegate calls; replace them in "
                       "the student, or accept them with executorch.allow_portable_ops: true")
        limit: int | str = "allowed" if islands and allowed else 0
        return [Check("float_ops", not islands or allowed, len(islands), limit, message)]


EXPORTERS.add("executorch", ExecutorchExporter)
