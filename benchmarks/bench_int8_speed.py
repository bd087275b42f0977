"""Is int8 faster than fp32 on this host? Batch-1, 1-thread latency per runtime, side by side.

    python benchmarks/bench_int8_speed.py [--model mobilenet_v3 ...] [--size 64 --size 96]
                                          [--format onnx --format tflite --format executorch] [--runs 400]

For each MobileNet-style student (edgeforge's built-in `mobilenet_v3` = MobileNetV3-Small and
`mobilenet_v2` = MobileNetV2 1.0 and `efficientnet_lite` = EfficientNet-Lite0 families: relu6,
3x3/5x5 depthwise, no squeeze-excite) at each input size, this makes the fp32
and int8 artifacts through edgeforge's own exporters and times them in their own runtimes through
edgeforge's runtime adapters (the sessions `edgeforge build` measures), interleaved round by round
so a change in the host's load hits fp32 and int8 alike. Warm-up first; median and p90 per artifact.

The students are randomly initialised and the int8 carrier is a PTQ carrier (edgeforge's int8
quantizer, observed ranges from 32 random-normal calibration images, `convert_pt2e`): the graph,
the int8 kernels and hence the speed are those of a QAT build; the accuracy is meaningless and not
reported. Also printed: for onnxruntime, the nodes its optimised graph (ORT_ENABLE_ALL) runs in
float (each named by type and by the student module it comes from); for LiteRT, the float ops left
in the int8 file; for ExecuTorch, the ops XNNPACK did not take. `--profile` adds onnxruntime's
per-op-type time (its profiler) and, for LiteRT, each operator's CPU time measured alone in a
single-op model cut from the file, summed per kernel: to tell slow int8 kernels from float islands.
`--hardswish native --hardswish decomposed` adds MobileNetV3 rows whose int8 carrier writes
hardswish as int8 parts (x * (relu6(x + 3) * 1/6)) instead of one HARD_SWISH op.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"onnx": ("onnx-cpu-fp32", "onnx-cpu-int8"), "tflite": ("tflite-cpu-fp32", "tflite-cpu-int8"),
           "executorch": ("executorch-cpu-fp32", "executorch-cpu-int8")}
RUNTIME_NAMES = {"onnx": "onnxruntime", "tflite": "LiteRT (XNNPACK)", "executorch": "ExecuTorch (XNNPACK)"}
# onnxruntime ops that compute on 8-bit tensors (fused QDQ) or only move data; anything else in an
# int8 model's optimised graph computes in float between a DequantizeLinear and a QuantizeLinear.
ORT_INT8 = {"QLinearConv", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
            "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax", "QLinearMatMul",
            "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearWhere"}
ORT_EDGES = {"QuantizeLinear", "DequantizeLinear"}
ORT_MOVES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Identity", "Gather", "Shape"}


def _family(name: str) -> Callable[[int, int], torch.nn.Module]:
    from edgeforge.models.students import STUDENTS

    return lambda cin, classes: STUDENTS.get(name)(cin, classes)


MODELS: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "mobilenet_v3": _family("mobilenet_v3"),
    "mobilenet_v2": _family("mobilenet_v2"),
    "efficientnet_lite0": _family("efficientnet_lite"),  # the family's defaults are EfficientNet-Lite0
}


@dataclass
class Row:
    model: str
    size: int
    params: int
    fmt: str
    ms: dict[str, list[float]] = field(default_factory=dict)  # precision -> wall-clock samples
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)  # precision -> thread CPU time samples
    unfused: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    profile: dict[str, dict[str, float]] = field(default_factory=dict)
    op_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # LiteRT profile: category -> ops


def ptq_carrier(model: torch.nn.Module, shape: tuple[int, ...], *, decompose_hardswish: bool = False) -> torch.fx.GraphModule:
    """edgeforge's int8 quantizer with observed ranges on random calibration images, converted."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeforge.quant.qat import export_for_training
    from edgeforge.quant.quantizer import Int8Quantizer, Int8Scheme

    calib = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    prepared = prepare_pt2e(export_for_training(copy.deepcopy(model).eval(), calib),
                            Int8Quantizer(Int8Scheme(learn_activation_ranges=False,
                                                     decompose_hardswish=decompose_hardswish)))
    with torch.no_grad():
        for i in range(0, len(calib), 8):
            prepared(calib[i : i + 8])
    return convert_pt2e(prepared)


def make_artifacts(model: torch.nn.Module, gm: torch.fx.GraphModule, shape: tuple[int, ...], fmt: str,
                   folder: Path) -> dict[str, tuple[Any, Any]]:
    """precision -> (ExportedArtifact, target) of one format, fp32 from the float model, int8 from gm.

    Both LiteRT files take NHWC input (the int8 profile's layout), so neither pays for a transpose
    the other does not.
    """
    from edgeforge.carrier import Carrier
    from edgeforge.exporters import get_exporter
    from edgeforge.targets import resolve

    carrier = Carrier(float_model=model, quantized=gm, input_shape=shape, num_classes=10,
                      class_names=[str(i) for i in range(10)], calibration=torch.zeros(1, *shape), name="bench")
    out: dict[str, tuple[Any, Any]] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for target in resolve(TARGETS[fmt]):
        if fmt == "tflite":
            target = target.model_copy(update={"input": target.input.model_copy(update={"layout": "NHWC"})})
        exporter = get_exporter(fmt)
        out[target.precision] = (exporter.export(carrier, target, folder / f"{target.name}{exporter.suffix}"), target)
    return out


def fx_modules(gm: torch.fx.GraphModule) -> dict[str, str]:
    """FX node name -> student module path, from the carrier's node metadata.

    torch.onnx names a node ``node_<fx name>``; re-exporting the carrier keeps most FX names (not
    those of ops it renumbers), so this maps most of onnxruntime's nodes back to the student's modules.
    """
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            names[node.name] = str(list(stack.values())[-1][0])
    # convert_pt2e's dequantize nodes carry no module: they belong to the op that reads them.
    for node in gm.graph.nodes:
        if node.name not in names and "dequantize" in str(node.target):
            users = [names[u.name] for u in node.users if u.name in names]
            if users:
                names[node.name] = users[0]
    return names


def ort_optimised(path: Path) -> Any:
    """The graph onnxruntime runs (ORT_ENABLE_ALL, CPU EP), as written by optimized_model_filepath."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(d) / "optimised.onnx")
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def ort_float_nodes(path: Path, modules: dict[str, str]) -> tuple[Counter[str], Counter[str]]:
    """(op type -> count over the optimised graph, "Type @ module" -> count for nodes computing in float)."""
    graph = ort_optimised(path).graph
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def where(node: Any) -> str:
        # A node keeps torch.onnx's name (node_<fx name>) or, when onnxruntime rewrote it (HardSwish
        # -> HardSigmoid + Mul), its output keeps the FX node's value name; else look downstream.
        todo, seen = [node], set()
        while todo and len(seen) < 16:
            n = todo.pop(0)
            seen.add(id(n))
            keys = [n.name, *n.output] + ([*n.input] if n is node else [])
            for key in (k.removeprefix("node_") for k in keys):
                if key in modules:
                    return modules[key]
            todo += [c for o in n.output for c in consumers.get(o, []) if id(c) not in seen]
        return ""

    ops: Counter[str] = Counter(n.op_type for n in graph.node)
    floats: Counter[str] = Counter()
    swish = _hardswish_parts(graph)
    for n in graph.node:
        if n.op_type in ORT_INT8 | ORT_EDGES | ORT_MOVES or (id(n) in swish and n.op_type == "HardSigmoid"):
            continue
        if id(n) in swish:  # onnxruntime's own rewrite of HardSwish: its names say nothing of the module
            floats["HardSwish (as HardSigmoid + Mul)"] += 1
            continue
        at = where(n)
        floats[f"{n.op_type} @ {_module_kind(at)}" if at else n.op_type] += 1
    return ops, floats


def _hardswish_parts(graph: Any) -> set[int]:
    """ids of the HardSigmoid(x) and Mul(x, HardSigmoid(x)) nodes onnxruntime writes for a HardSwish."""
    sigmoids = {n.output[0]: n for n in graph.node if n.op_type == "HardSigmoid"}
    parts: set[int] = set()
    for n in graph.node:
        if n.op_type == "Mul" and len(n.input) == 2:
            for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
                if b in sigmoids and sigmoids[b].input[0] == a:
                    parts |= {id(n), id(sigmoids[b])}
    return parts


def _module_kind(path: str) -> str:
    """``features.3.se.fc1`` -> ``features.*.se.fc1``: one line per kind of layer, not per block."""
    parts = path.split(".")
    return ".".join("*" if i == 1 and p.isdigit() and parts[0] == "features" else p for i, p in enumerate(parts))


def ort_summary(path: Path, modules: dict[str, str]) -> str:
    ops, floats = ort_float_nodes(path, modules)
    convs = ops["QLinearConv"] + ops["QGemm"]
    float_convs = ops["Conv"] + ops["FusedConv"] + ops["Gemm"] + ops["MatMul"]
    fused = sum(v for k, v in ops.items() if k in ORT_INT8)
    head = (f"{convs} QLinearConv/QGemm, {float_convs} float Conv/FusedConv/Gemm; {fused} int8 kernels, "
            f"{ops['DequantizeLinear']} DequantizeLinear, {ops['QuantizeLinear']} QuantizeLinear")
    if not floats:
        return head + "; no float compute"
    return head + "; float: " + ", ".join(f"{k} x{v}" for k, v in floats.most_common())


def ort_profile(path: Path, x: np.ndarray, runs: int) -> dict[str, float]:
    """Microseconds per run by op type, from onnxruntime's own profiler (1 thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    return {k: v / runs for k, v in per_op.most_common()}


def litert_op_models(path: Path) -> list[tuple[str, bytes]]:
    """(category, a .tflite holding only that operator) for each operator of the file, in graph order.

    LiteRT's Python interpreter has no per-op profiler, so each operator is cut out into a model of
    its own (its activation inputs become the model's inputs; weights, scales and fused activation
    stay) and timed alone with the same XNNPACK delegate. The category names the kernel: op type,
    kernel size for convolutions, and "SE" for ops inside a squeeze-excite module.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    sg = model.subgraphs[0]
    const = {i for i, t in enumerate(sg.tensors) if t.buffer and model.buffers[t.buffer].data is not None}
    op_names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    model.signatureDefs = []
    out = []
    for op in list(sg.operators):
        oc = model.operatorCodes[op.opcodeIndex]
        name = op_names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "?")
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            shape = sg.tensors[op.inputs[1]].shape
            name += f" {shape[1]}x{shape[2]}"
        tensor = sg.tensors[op.outputs[0]].name
        if b"SqueezeExcite" in (tensor if isinstance(tensor, bytes) else str(tensor).encode()):
            name = "SE " + name
        sg.operators = [op]
        sg.inputs = [i for i in op.inputs if i >= 0 and i not in const]
        sg.outputs = list(op.outputs)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        out.append((name, bytes(builder.Output())))
    return out


def litert_op_times(path: Path, runs: int) -> tuple[dict[str, float], dict[str, int]]:
    """(category -> CPU microseconds per run, summed over its ops; category -> op count), 1 thread.

    Each single-op model's median thread-CPU time per invoke, minus the invoke overhead (the
    median of the cheapest op model: a call that computes almost nothing), floored at 0.
    """
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    per_op: list[tuple[str, float]] = []
    for name, data in litert_op_models(path):
        it = Interpreter(model_content=data, num_threads=1)
        it.allocate_tensors()
        for d in it.get_input_details():
            info = np.iinfo(d["dtype"]) if d["dtype"] != np.float32 else None
            x = (rng.integers(info.min, info.max + 1, d["shape"]) if info else rng.standard_normal(d["shape"]))
            it.set_tensor(d["index"], x.astype(d["dtype"]))
        samples = []
        for i in range(runs + 20):
            c0 = time.thread_time()
            it.invoke()
            if i >= 20:
                samples.append((time.thread_time() - c0) * 1e6)
        per_op.append((name, float(np.median(samples))))
    overhead = min(us for _, us in per_op)
    times: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for name, us in per_op:
        times[name] += max(0.0, us - overhead)
        counts[name] += 1
    times["(invoke overhead per op, subtracted)"] = overhead
    return dict(times), dict(counts)


def tflite_summary(info: dict[str, Any]) -> str:
    from edgeforge.exporters.tflite import describe_float_ops

    floats = info.get("float_ops") or []
    return f"float ops: {describe_float_ops(floats)}" if floats else "every op int8 (float only at the I/O edge)"


def executorch_summary(info: dict[str, Any]) -> str:
    islands = info.get("float_islands") or []
    return f"not delegated (float): {', '.join(islands)}" if islands else "every op in the XNNPACK delegate"


def interleaved(sessions: dict[str, Any], x: np.ndarray, warmup: int, runs: int,
                block: int = 10) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall ms, CPU ms of this thread) per run of each session, in alternating blocks after a warm-up.

    With one thread every runtime here computes on the calling thread, so its CPU time is the work
    done, while wall time also holds the time the host's other processes took the core away.
    """
    for s in sessions.values():
        for _ in range(warmup):
            s.run(x)
    wall: dict[str, list[float]] = {k: [] for k in sessions}
    cpu: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(max(1, runs // block)):
        for key, s in sessions.items():
            for _ in range(block):
                t0, c0 = time.perf_counter(), time.thread_time()
                s.run(x)
                cpu[key].append((time.thread_time() - c0) * 1e3)
                wall[key].append((time.perf_counter() - t0) * 1e3)
    return wall, cpu


def measure(model: torch.nn.Module, gm: torch.fx.GraphModule, row: Row, folder: Path,
            args: argparse.Namespace) -> Row:
    from edgeforge.runtimes import get_runtime

    name, size, fmt = row.model, row.size, row.fmt
    shape = (3, size, size)
    try:
        arts = make_artifacts(model, gm, shape, fmt, folder / f"{name}_{size}")
    except Exception as exc:  # a format failing on one student is a finding; the others go on
        row.errors["export"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
        return row
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    sessions = {prec: get_runtime(fmt).open(art.path, target) for prec, (art, target) in arts.items()}
    row.ms, row.cpu_ms = interleaved(sessions, x, args.warmup, args.runs)
    int8_art = arts["int8"][0]
    if fmt == "onnx":
        row.unfused = ort_summary(int8_art.path, fx_modules(gm))
        if args.profile:
            row.profile = {p: ort_profile(a.path, x, 200) for p, (a, _) in arts.items()}
    elif fmt == "tflite":
        row.unfused = tflite_summary(int8_art.info)
        if args.profile:
            for p, (a, _) in arts.items():
                row.profile[p], row.op_counts[p] = litert_op_times(a.path, 200)
    else:
        row.unfused = executorch_summary(int8_art.info)
    return row


def host_line() -> str:
    from edgeforge.hostinfo import host_facts

    h = host_facts()
    cpu = h["cpu"]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"host: {cpu['model']} ({h['machine']}, {h['cpus']} CPUs; int8 flags: {', '.join(cpu['int8_flags']) or 'none'};"
            f" int8 class {cpu['int8_class']}); load average {load}")


def versions_line() -> str:
    import importlib.metadata as md

    names = ["torch", "onnxruntime", "ai-edge-litert", "litert-torch", "executorch"]
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            continue
    return ", ".join(found)


def _stats(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 90))


def print_litert_profile(r: Row) -> None:
    """Per-kernel CPU time of the fp32 and int8 LiteRT files, each op timed alone (see litert_op_times)."""
    f, i = r.profile["fp32"], r.profile["int8"]
    fc, ic = r.op_counts["fp32"], r.op_counts["int8"]
    print(f"\nLiteRT per-op CPU time, {r.model} 3x{r.size}x{r.size}: each operator cut into a model of its own and "
          "timed alone (XNNPACK, 1 thread, median of 200 invokes minus the invoke overhead), summed by kernel\n")
    print("| kernel | ops fp32 / int8 | fp32 us | int8 us | int8 - fp32 us | int8/fp32 |\n|---|---|---|---|---|---|")
    keys = sorted(set(f) | set(i), key=lambda k: -(i.get(k, 0.0) - f.get(k, 0.0)))
    for k in keys:
        a, b = f.get(k, 0.0), i.get(k, 0.0)
        ratio = f"{b / a:.2f}x" if a > 0.05 else "–"
        print(f"| {k} | {fc.get(k, 0)} / {ic.get(k, 0)} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {ratio} |")
    over = "(invoke overhead per op, subtracted)"
    tf, ti = (sum(v for k, v in d.items() if k != over) for d in (f, i))
    print(f"| **sum of the ops** | {sum(fc.values())} / {sum(ic.values())} | {tf:.1f} | {ti:.1f} | {ti - tf:+.1f} | "
          f"{ti / tf:.2f}x |")
    print(f"\nwhole model, CPU median: fp32 {1e3 * _stats(r.cpu_ms['fp32'])[0]:.1f} us, "
          f"int8 {1e3 * _stats(r.cpu_ms['int8'])[0]:.1f} us")


def print_table(rows: list[Row], args: argparse.Namespace, wall: float) -> None:
    print(f"\n{host_line()}\n{versions_line()}\n"
          f"batch 1, 1 thread; {args.warmup} warm-up runs, then {args.runs} timed runs per artifact in alternating "
          "blocks of 10; PTQ carrier from random calibration images (speed only); wall-clock medians (p90), and "
          "the ratio of the medians of the calling thread's CPU time (the work done, whatever the host's load)\n")
    print("| student | input | params | runtime | fp32 ms median (p90) | int8 ms median (p90) | int8/fp32 wall | "
          "int8/fp32 CPU | int8 graph: what does not run as int8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lead = f"| {r.model} | 3x{r.size}x{r.size} | {r.params / 1e6:.2f} M | {RUNTIME_NAMES[r.fmt]} |"
        if r.errors:
            print(f"{lead} – | – | – | – | {'; '.join(f'{k}: {v}' for k, v in r.errors.items())} |")
            continue
        (f50, f90), (i50, i90) = _stats(r.ms["fp32"]), _stats(r.ms["int8"])
        cpu = _stats(r.cpu_ms["int8"])[0] / _stats(r.cpu_ms["fp32"])[0]
        print(f"{lead} {f50:.3f} ({f90:.3f}) | {i50:.3f} ({i90:.3f}) | {i50 / f50:.2f}x | **{cpu:.2f}x** | {r.unfused} |")
    for r in (r for r in rows if r.profile and r.fmt == "tflite"):
        print_litert_profile(r)
    for r in (r for r in rows if r.profile and r.fmt == "onnx"):
        print(f"\nonnxruntime profile, {r.model} 3x{r.size}x{r.size} (us per run by op type; the profiler adds "
              "its own overhead per node)\n")
        print("| precision | " + " | ".join(["total", "top op types"]) + " |\n|---|---|---|")
        for prec, per_op in r.profile.items():
            top = ", ".join(f"{k} {v:.0f}" for k, v in list(per_op.items())[:8])
            print(f"| {prec} | {sum(per_op.values()):.0f} | {top} |")
    print(f"\nbenchmark wall time: {wall:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=sorted(MODELS), help="default: all")
    ap.add_argument("--size", action="append", type=int, help="input height = width (default: 64 and 96)")
    ap.add_argument("--format", action="append", choices=sorted(TARGETS), help="default: onnx, tflite, executorch")
    ap.add_argument("--runs", type=int, default=400, help="timed runs per artifact")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--profile", action="store_true", help="add onnxruntime's per-op-type profile and LiteRT's per-op CPU times")
    ap.add_argument("--hardswish", action="append", choices=["native", "decomposed"],
                    help="int8 hardswish as one op (default) or as int8 ADD+RELU6, MUL, MUL (Int8Scheme."
                         "decompose_hardswish); give both to compare")
    ap.add_argument("--keep", type=Path, help="write the artifacts here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="also write the table here after every measurement")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for name in args.model or list(MODELS):
            for size in args.size or [64, 96]:
                for hardswish in args.hardswish or ["native"]:
                    measure_student(name, size, hardswish, rows, folder, args, t0)
    print_table(rows, args, time.perf_counter() - t0)


def measure_student(name: str, size: int, hardswish: str, rows: list[Row], folder: Path, args: argparse.Namespace,
                    t0: float) -> None:
    torch.manual_seed(0)
    model = MODELS[name](3, 10).eval()
    gm = ptq_carrier(model, (3, size, size), decompose_hardswish=hardswish == "decomposed")
    label = name if hardswish == "native" else f"{name}+hardswish-parts"
    for fmt in args.format or list(TARGETS):
        row = Row(label, size, sum(p.numel() for p in model.parameters()), fmt)
        rows.append(measure(model, gm, row, folder, args))
        print(f"measured {label} {size} {fmt}", file=sys.stderr, flush=True)
        if args.out:  # the table so far, so a long run on a busy host shows results early
            with contextlib.redirect_stdout(io.StringIO()) as buf:
                print_table(rows, args, time.perf_counter() - t0)
            args.out.write_text(buf.getvalue())


if __name__ == "__main__":
    main()
