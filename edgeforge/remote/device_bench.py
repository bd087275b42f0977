"""Batch latency of one model file, run ON the device; prints one JSON line and nothing else on stdout.

Copied to the device by ``edgeforge.remote.ssh`` and run with the device's own Python. It must stay
self-contained: the standard library, numpy and the runtime only (no edgeforge, no pydantic), and
Python 3.7 syntax, since boards often ship an old interpreter.

    python3 device_bench.py --model m.onnx --format onnx --threads 2 --warmup 5 --runs 50

On success the line is ``{"ok": true, "p50_ms": ..., ...}``; on a failure it is
``{"ok": false, "error": KIND, "message": ...}`` with exit code 2, KIND being one of
``missing_module``, ``shape_mismatch``, ``load_failed``, ``run_failed``.
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


def _resolve_shape(model_shape, hint):
    """The model's own shape; a dynamic dimension (None, a name, -1) takes the hint's value, else 1."""
    if hint is not None and len(hint) != len(model_shape):
        raise BenchError("shape_mismatch", f"the model's input has rank {len(model_shape)} ({list(model_shape)}) "
                         f"but the expected input shape is {list(hint)}")
    out = []
    for i, d in enumerate(model_shape):
        static = isinstance(d, int) and d > 0
        if static and hint is not None and hint[i] != d:
            raise BenchError("shape_mismatch", f"the model's input shape is {list(model_shape)} "
                             f"but the expected input shape is {list(hint)}")
        out.append(d if static else (hint[i] if hint is not None else 1))
    return out


def _random_input(np, rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape, dtype=dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    raise BenchError("shape_mismatch", f"input dtype {dt} is not supported by the benchmark")


def _check_dtype(model_dtype, hint):
    if hint is not None and str(model_dtype) != hint:
        raise BenchError("shape_mismatch", f"the model's input dtype is {model_dtype} but the expected input dtype is {hint}")


class _Onnx:
    def __init__(self, np, path, threads, shape_hint, dtype_hint):
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
        types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                 "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32",
                 "tensor(int64)": "int64", "tensor(bool)": "bool"}
        rng = np.random.default_rng(0)
        self.feed = {}
        self.input_shape, self.input_dtype = None, None
        for i, inp in enumerate(self.sess.get_inputs()):
            dtype = types.get(inp.type)
            if dtype is None:
                raise BenchError("load_failed", f"input '{inp.name}' has type {inp.type}, which the benchmark cannot feed")
            shape = _resolve_shape(inp.shape, shape_hint if i == 0 else None)
            if i == 0:
                _check_dtype(dtype, dtype_hint)
                self.input_shape, self.input_dtype = shape, dtype
            self.feed[inp.name] = _random_input(np, rng, shape, dtype)

    def run(self):
        self.sess.run(None, self.feed)


class _Tflite:
    def __init__(self, np, path, threads, shape_hint, dtype_hint):
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
            for i, d in enumerate(details):
                signature = [int(x) for x in d.get("shape_signature", d["shape"])]
                shape = _resolve_shape(signature, shape_hint if i == 0 else None)
                if shape != [int(x) for x in d["shape"]]:
                    self.interp.resize_tensor_input(d["index"], shape)
            self.interp.allocate_tensors()
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BenchError("load_failed", f"{self.name} could not load the model: {_one_line(exc)}")
        self.load_ms = (time.perf_counter() - t0) * 1e3
        rng = np.random.default_rng(0)
        self.inputs = []
        for i, d in enumerate(self.interp.get_input_details()):
            dtype = np.dtype(d["dtype"]).name
            shape = [int(x) for x in d["shape"]]
            if i == 0:
                _check_dtype(dtype, dtype_hint)
                self.input_shape, self.input_dtype = shape, dtype
            self.inputs.append((d["index"], _random_input(np, rng, shape, dtype)))

    def run(self):
        for index, value in self.inputs:
            self.interp.set_tensor(index, value)
        self.interp.invoke()


class _Executorch:
    """A .pte program in ExecuTorch's Python bindings (which take torch tensors, so torch is needed too)."""

    # c10::ScalarType codes the bindings report for a tensor's dtype
    _DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}

    def __init__(self, np, path, threads, shape_hint, dtype_hint):
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
        meta = self.method.metadata.input_tensor_meta(0)
        shape = _resolve_shape([int(d) for d in meta.sizes()], shape_hint)
        dtype = self._DTYPES.get(int(meta.dtype()))
        if dtype is None:
            raise BenchError("load_failed", f"the program's input has dtype code {meta.dtype()}, which the "
                             "benchmark cannot feed")
        _check_dtype(dtype, dtype_hint)
        self.input_shape, self.input_dtype = shape, dtype
        self.inputs = [torch.from_numpy(_random_input(np, np.random.default_rng(0), shape, dtype))]

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
    session = SESSIONS[args.format](np, args.model, args.threads, shape_hint, args.dtype)
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
    return {
        "ok": True,
        "batch": int(session.input_shape[0]) if session.input_shape else 1,
        "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
        "load_ms": session.load_ms,
        # Same estimator as edgeforge.validate.measure_latency, so host and device numbers compare.
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
        "samples_ms": [round(float(v), 5) for v in ms],
        "runtime": session.name, "runtime_version": session.version,
        "input_shape": session.input_shape, "input_dtype": session.input_dtype,
        "uname": f"{u.system} {u.node} {u.release} {u.machine}",
        "python": platform.python_version(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--format", required=True, choices=sorted(RUNTIME_MODULES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--shape", default="", help="expected input shape, e.g. 1,3,32,32 (fills dynamic dims)")
    p.add_argument("--dtype", default=None, help="expected input dtype, e.g. float32")
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
