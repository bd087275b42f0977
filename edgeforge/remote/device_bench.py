"""Batch latency of one model file, run ON the device; prints one JSON line and nothing else on stdout.

Copied to the device by ``edgeforge.remote.ssh`` and run with the device's own Python. It must stay
self-contained: the standard library, numpy and the runtime only (no edgeforge, no pydantic), and
Python 3.7 syntax, since boards often ship an old interpreter.

    python3 device_bench.py --model m.onnx --format onnx --threads 2 --warmup 5 --runs 50 \
        --inputs '[{"name": "input_ids", "shape": [1, 128], "dtype": "int64", "value_range": [0, 30521]},
                   {"name": "attention_mask", "shape": [1, 128], "dtype": "int64", "value_range": [1, 1]}]'

``--inputs`` lists every model input: its full shape (batch first; it fills the model's dynamic
dimensions and must agree with its static ones), its dtype and, for integer inputs, the range to
draw values from, both ends inclusive as in benchmark_model's ``--input_layer_value_range`` (token
ids: 0 .. vocab_size - 1, so every embedding lookup stays in the table; a mask: 1 .. 1). Inputs are
matched by name in ONNX (a single input by position), by signature name or else by position in
LiteRT (converters name them args_0, args_1, ...), by position in ExecuTorch (a program has no input
names). int32 and int64 stand for each other (converters narrow int64 ids to int32); the model's own
dtype is fed. Without ``--inputs``, ``--shape``/``--dtype`` describe the first input only (older
callers) and every other input gets its own shape with dynamic dimensions set to 1.

On success the line is ``{"ok": true, "p50_ms": ..., "input_shapes": {name: shape}, ...}``; on a
failure it is ``{"ok": false, "error": KIND, "message": ...}`` with exit code 2, KIND being one of
``missing_module``, ``bad_inputs``, ``shape_mismatch``, ``load_failed``, ``run_failed``.
"""

import argparse
import json
import platform
import sys
import time

RUNTIME_MODULES = {"onnx": ["onnxruntime"], "tflite": ["ai_edge_litert", "tflite_runtime"],
                   "executorch": ["executorch.runtime"]}


class BenchError(Exception):
    def __init__(self, kind, message, **extra):
        super().__init__(message)
        self.kind = kind
        self.extra = extra


def _parse_inputs(text):
    """``--inputs`` as a list of {name, shape, dtype, value_range}; a malformed entry is named in one line."""
    try:
        specs = json.loads(text)
    except ValueError as exc:
        raise BenchError("bad_inputs", f"--inputs is not JSON: {_one_line(exc)}")
    if not isinstance(specs, list) or not specs:
        raise BenchError("bad_inputs", "--inputs must be a non-empty JSON list, one object per model input")
    out = []
    for i, s in enumerate(specs):
        name = s.get("name") if isinstance(s, dict) else None
        if not isinstance(name, str) or not name:
            raise BenchError("bad_inputs", f"--inputs entry {i} has no name")
        shape, dtype, vr = s.get("shape"), s.get("dtype"), s.get("value_range")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise BenchError("bad_inputs", f"input '{name}': shape {shape} is not a list of sizes >= 1")
        if not isinstance(dtype, str):
            raise BenchError("bad_inputs", f"input '{name}': dtype {dtype!r} is not a dtype name such as int64")
        if vr is not None and not (isinstance(vr, list) and len(vr) == 2 and all(isinstance(v, int) for v in vr)
                                   and vr[0] <= vr[1]):
            raise BenchError("bad_inputs", f"input '{name}': value_range {vr} is not [low, high] with low <= high")
        out.append({"name": name, "shape": shape, "dtype": dtype, "value_range": vr})
    names = [s["name"] for s in out]
    if len(set(names)) != len(names):
        raise BenchError("bad_inputs", f"--inputs names an input twice: {', '.join(names)}")
    return out


def _resolve_shape(model_shape, hint, name=None):
    """The model's own shape; a dynamic dimension (None, a name, -1) takes the hint's value, else 1."""
    who = "" if name is None else f"input '{name}': "
    if hint is not None and len(hint) != len(model_shape):
        raise BenchError("shape_mismatch", f"{who}the model's input has rank {len(model_shape)} ({list(model_shape)}) "
                         f"but the expected input shape is {list(hint)}")
    out = []
    for i, d in enumerate(model_shape):
        static = isinstance(d, int) and d > 0
        if static and hint is not None and hint[i] != d:
            raise BenchError("shape_mismatch", f"{who}the model's input shape is {list(model_shape)} "
                             f"but the expected input shape is {list(hint)}")
        out.append(d if static else (hint[i] if hint is not None else 1))
    return out


def _check_dtype(model_dtype, hint, name=None, integers_alike=False):
    if hint is None or str(model_dtype) == hint:
        return
    ints = ("int8", "uint8", "int16", "int32", "int64")
    if integers_alike and str(model_dtype) in ints[3:] and hint in ints[3:]:
        return  # int64 ids narrowed to int32 by a converter: the same values fit
    who = "" if name is None else f"input '{name}': "
    raise BenchError("shape_mismatch", f"{who}the model's input dtype is {model_dtype} but the expected input "
                     f"dtype is {hint}")


def _random_input(np, rng, shape, dtype, value_range=None):
    dt = np.dtype(dtype)
    if value_range is not None and dt.kind in "iu":
        low, high = value_range
        info = np.iinfo(dt)
        if low < info.min or high > info.max:
            raise BenchError("bad_inputs", f"value range {list(value_range)} does not fit the model's {dt} input")
        return rng.integers(low, high, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape, dtype=dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    raise BenchError("shape_mismatch", f"input dtype {dt} is not supported by the benchmark")


def _pair(model_inputs, specs, match):
    """The spec of each model input, in model order: by name (``match`` "name", "name_or_order") or by position."""
    names = [m[0] for m in model_inputs]
    if len(specs) != len(model_inputs):
        raise BenchError("shape_mismatch", f"the model takes {len(names)} input(s) ({', '.join(names)}) but the "
                         f"expected inputs are {len(specs)} ({', '.join(s['name'] for s in specs)})")
    by_name = {s["name"]: s for s in specs}
    if match != "order" and all(n in by_name for n in names):
        return [by_name[n] for n in names]
    if match == "name" and len(specs) > 1:
        missing = next(s["name"] for s in specs if s["name"] not in names)
        raise BenchError("shape_mismatch", f"input '{missing}' is not one of the model's inputs ({', '.join(names)})")
    return list(specs)


def plan_inputs(model_inputs, specs, shape_hint=None, dtype_hint=None, match="name"):
    """What to feed each model input, in model order: [(label, shape, dtype, value_range)].

    ``model_inputs`` is (name, shape with dynamic dimensions, dtype) per model input, in its order.
    With ``specs`` (``--inputs``) every input is checked against its spec and labelled with the spec's
    name; without, only the first input is checked against the old ``--shape``/``--dtype`` hints.
    """
    plan = []
    if specs is None:
        for i, (name, shape, dtype) in enumerate(model_inputs):
            if i == 0:
                _check_dtype(dtype, dtype_hint)
            plan.append((name, _resolve_shape(shape, shape_hint if i == 0 else None), dtype, None))
        return plan
    for (_, shape, dtype), spec in zip(model_inputs, _pair(model_inputs, specs, match)):
        label = spec["name"]
        resolved = _resolve_shape(shape, spec["shape"], label)
        _check_dtype(dtype, spec["dtype"], label, integers_alike=True)
        plan.append((label, resolved, dtype, spec["value_range"]))
    return plan


def _values(np, plan):
    """One array per planned input; token ids drawn inside their range, from a fixed seed."""
    rng = np.random.default_rng(0)
    out = []
    for label, shape, dtype, value_range in plan:
        try:
            out.append(_random_input(np, rng, shape, dtype, value_range))
        except BenchError as exc:
            raise BenchError(exc.kind, f"input '{label}': {exc}")
    return out


class _Onnx:
    TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32",
             "tensor(int64)": "int64", "tensor(bool)": "bool"}

    def __init__(self, np, path, threads, shape_hint, dtype_hint, specs=None):
        import onnxruntime as ort

        self.name, self.version = "onnxruntime", ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        t0 = time.perf_counter()
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            raise BenchError("load_failed", f"onnxruntime could not load the model: {_one_line(exc)}")
        self.load_ms = (time.perf_counter() - t0) * 1e3
        model_inputs = []
        for inp in self.sess.get_inputs():
            if inp.type not in self.TYPES:
                raise BenchError("load_failed", f"input '{inp.name}' has type {inp.type}, which the benchmark cannot feed")
            model_inputs.append((inp.name, inp.shape, self.TYPES[inp.type]))
        self.plan = plan_inputs(model_inputs, specs, shape_hint, dtype_hint, match="name")
        self.values = _values(np, self.plan)
        self.feed = {m[0]: v for m, v in zip(model_inputs, self.values)}

    def run(self):
        self.sess.run(None, self.feed)


class _Tflite:
    def __init__(self, np, path, threads, shape_hint, dtype_hint, specs=None):
        try:
            from ai_edge_litert.interpreter import Interpreter

            self.name, dist = "ai_edge_litert", "ai-edge-litert"
        except ImportError:
            from tflite_runtime.interpreter import Interpreter

            self.name, dist = "tflite_runtime", "tflite-runtime"
        self.version = _dist_version(dist)
        t0 = time.perf_counter()
        try:
            self.interp = Interpreter(model_path=path, num_threads=threads)
            details = self.interp.get_input_details()
            names = _signature_names(self.interp, details)
            model_inputs = [(n, [int(x) for x in d.get("shape_signature", d["shape"])], np.dtype(d["dtype"]).name)
                            for n, d in zip(names, details)]
            self.plan = plan_inputs(model_inputs, specs, shape_hint, dtype_hint, match="name_or_order")
            for d, (_, shape, _, _) in zip(details, self.plan):
                if shape != [int(x) for x in d["shape"]]:
                    self.interp.resize_tensor_input(d["index"], shape)
            self.interp.allocate_tensors()
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BenchError("load_failed", f"{self.name} could not load the model: {_one_line(exc)}")
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.values = _values(np, self.plan)
        self.inputs = [(d["index"], v) for d, v in zip(details, self.values)]

    def run(self):
        for index, value in self.inputs:
            self.interp.set_tensor(index, value)
        self.interp.invoke()


def _signature_names(interp, details):
    """Each input's name in the default signature (what the source model called it), else its tensor name."""
    try:
        by_index = {d["index"]: n for n, d in interp.get_signature_runner().get_input_details().items()}
    except Exception:  # noqa: BLE001 - no signature, several, or an old runtime: tensor names then
        by_index = {}
    return [by_index.get(d["index"], d["name"]) for d in details]


class _Executorch:
    """A .pte program in ExecuTorch's Python bindings (which take torch tensors, so torch is needed too)."""

    # c10::ScalarType codes the bindings report for a tensor's dtype
    _DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}

    def __init__(self, np, path, threads, shape_hint, dtype_hint, specs=None):
        import torch
        from executorch.runtime import Runtime

        self.name, self.version = "executorch", _dist_version("executorch")
        try:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        except (ImportError, AttributeError):
            pass  # older bindings: XNNPACK picks its own thread count
        t0 = time.perf_counter()
        try:
            self.program = Runtime.get().load_program(path)
            self.method = self.program.load_method("forward")
        except Exception as exc:  # noqa: BLE001
            raise BenchError("load_failed", f"executorch could not load the program: {_one_line(exc)}")
        self.load_ms = (time.perf_counter() - t0) * 1e3
        meta = self.method.metadata
        model_inputs = []
        for i in range(meta.num_inputs()):
            tensor = meta.input_tensor_meta(i)
            dtype = self._DTYPES.get(int(tensor.dtype()))
            if dtype is None:
                raise BenchError("load_failed", f"the program's input {i} has dtype code {tensor.dtype()}, which the "
                                 "benchmark cannot feed")
            model_inputs.append((f"input_{i}", [int(d) for d in tensor.sizes()], dtype))
        self.plan = plan_inputs(model_inputs, specs, shape_hint, dtype_hint, match="order")
        self.values = _values(np, self.plan)
        self.inputs = [torch.from_numpy(v) for v in self.values]

    def run(self):
        self.method.execute(self.inputs)


SESSIONS = {"onnx": _Onnx, "tflite": _Tflite, "executorch": _Executorch}


def _dist_version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - Python < 3.8 or an unusual install: the version is informative only
        return "unknown"


def _one_line(exc):
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def _import_first(names):
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
            return name
        except ImportError:
            continue
    raise BenchError("missing_module", f"{' or '.join(names)} is not installed in {sys.executable}",
                     module=names[0])


def bench(args):
    try:
        import numpy as np
    except ImportError:
        raise BenchError("missing_module", f"numpy is not installed in {sys.executable}", module="numpy")
    _import_first(RUNTIME_MODULES[args.format])
    shape_hint = [int(d) for d in args.shape.split(",")] if args.shape else None
    specs = _parse_inputs(args.inputs) if args.inputs else None
    session = SESSIONS[args.format](np, args.model, args.threads, shape_hint, args.dtype, specs)
    try:
        for _ in range(args.warmup):
            session.run()
        times = np.empty(args.runs)
        for i in range(args.runs):
            t0 = time.perf_counter()
            session.run()
            times[i] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001
        raise BenchError("run_failed", f"{session.name} failed to run the model: {_one_line(exc)}")
    ms = times * 1e3
    u = platform.uname()
    first = session.plan[0] if session.plan else (None, None, None, None)
    return {
        "ok": True,
        "batch": int(first[1][0]) if first[1] else 1,
        "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
        "load_ms": session.load_ms,
        # Same estimator as edgeforge.validate.measure_latency, so host and device numbers compare.
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
        "samples_ms": [round(float(v), 5) for v in ms],
        "runtime": session.name, "runtime_version": session.version,
        "input_shape": first[1], "input_dtype": first[2],  # the first input's, for older callers
        **_input_report(session),
        "uname": f"{u.system} {u.node} {u.release} {u.machine}",
        "python": platform.python_version(),
    }


def _input_report(session):
    """Per input (by the spec's name, else the model's): the shape and dtype fed, and integer values' min/max."""
    ranges = {}
    for (label, _, _, _), v in zip(session.plan, session.values):
        if v.dtype.kind in "iu" and v.size:
            ranges[label] = [int(v.min()), int(v.max())]
    return {"input_shapes": {p[0]: list(p[1]) for p in session.plan},
            "input_dtypes": {p[0]: p[2] for p in session.plan}, "input_ranges": ranges}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--format", required=True, choices=sorted(RUNTIME_MODULES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--shape", default="", help="expected input shape, e.g. 1,3,32,32 (fills dynamic dims)")
    p.add_argument("--dtype", default=None, help="expected input dtype, e.g. float32")
    p.add_argument("--inputs", default="", help="JSON list, one {name, shape, dtype, value_range} per input "
                   "(overrides --shape/--dtype)")
    args = p.parse_args(argv)
    try:
        out = bench(args)
    except BenchError as exc:
        out = dict({"ok": False, "error": exc.kind, "message": str(exc)}, **exc.extra)
        print(json.dumps(out), flush=True)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
