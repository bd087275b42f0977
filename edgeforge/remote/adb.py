"""Measure latency on an Android device with adb: TFLite's ``benchmark_model``, ExecuTorch's ``executor_runner``.

The binary must already be on the device (``adb push benchmark_model /data/local/tmp/ && adb shell
chmod +x /data/local/tmp/benchmark_model``); its path is configurable. Per run: push the artifact,
run ``benchmark_model --graph=... --num_threads=N --warmup_runs=W --num_runs=R``, parse its log,
remove the artifact.

A model with several inputs, or integer ones, gets ``--input_layer=a,b --input_layer_shape=1,128:1,128
--input_layer_value_range=input_ids,0,30521:attention_mask,1,1``: benchmark_model otherwise draws
integers from 0..99 (out of a small vocabulary) and needs every shape once one is given. It matches
these flags to the model's inputs by position (a name that differs from the tensor's, e.g.
``serving_default_args_0``, only logs a warning); ranges are inclusive at both ends.

benchmark_model treats ``--num_runs`` and ``--warmup_runs`` as minimums alongside ``--min_secs``
(default 1 s) and ``--warmup_min_secs`` (0.5 s); both are set to 0 so the counts are the ones
asked for (``max_secs``, 150 s by default, can still cut a very slow run short). The counts
reported are the ones the tool printed.

What the log gives, per ``tensorflow/lite/tools/benchmark/benchmark_model.cc`` and
``xla/tsl/util/stats_calculator.h`` (lines may carry an ``INFO: `` prefix):

    count=50 first=.. curr=.. min=.. max=.. avg=.. std=.. [p5=.. median=.. p95=..]   (warm-up, then runs)
    Inference timings in us: Init: X, First inference: Y, Warmup (avg): Z, Inference (avg): W

All in microseconds. Newer builds print p5/median/p95; none print p90 or p99, so ``p90_ms`` and
``p99_ms`` are None here and p95 is in ``extra`` (an upper bound for p90). With
``--enable_op_profiling`` the per-op tables add "Timings (microseconds): count=..." lines, which
the parser skips.

UNTESTED AGAINST A REAL DEVICE: no Android device is attached where this was written. The parser
is tested on format examples built from the sources above, and the runner on a fake ``adb``.
"""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..records import Latency as DeviceLatency
from . import (
    BenchInput,
    DeviceAuthFailed,
    DeviceBenchFailed,
    DeviceRuntimeMissing,
    DeviceUnreachable,
    RemoteError,
    one_line,
)

ADB_SLACK_S = 60.0  # push of a few MB over USB, device info, clean-up


@dataclass(frozen=True)
class AdbDevice:
    serial: str
    benchmark_model: str = "/data/local/tmp/benchmark_model"
    workdir: str = "/data/local/tmp"
    adb: str = "adb"  # the adb client on this machine

    @property
    def label(self) -> str:
        return f"adb:{self.serial}"

    @property
    def where(self) -> str:
        return f"adb device {self.serial}"


@dataclass
class RunStats:
    """One ``count=...`` line of benchmark_model, in microseconds; percentiles only on newer builds."""

    count: int
    first_us: float
    curr_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass
class BenchmarkOutput:
    init_us: float
    first_inference_us: float | None  # absent from the older summary line
    warmup_avg_us: float
    inference_avg_us: float
    warmup: RunStats | None
    inference: RunStats | None


_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"
_SUMMARY = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
                      rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}")
# Before ~TF 2.3 the summary read "Average inference timings in us: Warmup: Z, Init: X, Inference: W"
# (or "no stats: W"); the TFLite docs still show it.
_OLD_SUMMARY = re.compile(rf"Average inference timings in us: Warmup: {_NUM}, Init: {_NUM}, "
                          rf"(?:Inference|no stats): {_NUM}")
_STAT_LINE = re.compile(r"^\s*(?:[A-Z]+:\s+)?count=\d")  # not "Timings (microseconds): count=" (op profiling)
_KV = re.compile(rf"(\w+)={_NUM}")


def _stats(line: str) -> RunStats:
    kv = {k: float(v) for k, v in _KV.findall(line)}
    count = int(kv["count"])
    if "min" not in kv:  # "count=N curr=X(all same)" or "count=0"
        same = kv.get("curr", float("nan"))
        return RunStats(count, same, same, same, same, same, 0.0)
    return RunStats(count, kv["first"], kv["curr"], kv["min"], kv["max"], kv["avg"], kv["std"],
                    kv.get("p5"), kv.get("median"), kv.get("p95"))


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Parse benchmark_model's log; ValueError (with the tool's own ERROR line if any) when it has no result."""
    stats = [_stats(ln) for ln in text.splitlines() if _STAT_LINE.match(ln)]
    warmup, inference = (stats + [None, None])[:2]
    if m := _SUMMARY.search(text):
        init, first, warm, inf = (float(g) for g in m.groups())
        return BenchmarkOutput(init, first, warm, inf, warmup, inference)
    if m := _OLD_SUMMARY.search(text):
        warm, init, inf = (float(g) for g in m.groups())
        return BenchmarkOutput(init, warmup.first_us if warmup else None, warm, inf, warmup, inference)
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
    raise ValueError(errors[0] if errors else "no 'Inference timings in us' line in benchmark_model's output")


def to_latency(out: BenchmarkOutput, *, device: AdbDevice, threads: int, warmup: int, runs: int, batch: int = 1,
               device_info: str = "") -> DeviceLatency:
    ms = 1e-3
    inf = out.inference

    def opt(v: float | None) -> float | None:
        return None if v is None else v * ms

    extra: dict[str, object] = {"benchmark_model": device.benchmark_model, "warmup_avg_ms": out.warmup_avg_us * ms,
                                "first_inference_ms": opt(out.first_inference_us)}
    if inf is not None:
        extra.update(p5_ms=opt(inf.p5_us), p95_ms=opt(inf.p95_us), min_ms=inf.min_us * ms, max_ms=inf.max_us * ms,
                     std_ms=inf.std_us * ms)
    return DeviceLatency(
        batch=batch, threads=threads, warmup=out.warmup.count if out.warmup else warmup,
        runs=inf.count if inf else runs, load_ms=out.init_us * ms, p50_ms=opt(inf.median_us) if inf else None,
        p90_ms=None, p99_ms=None, mean_ms=out.inference_avg_us * ms, measured_on=device.label,
        runtime="tflite benchmark_model", runtime_version="", device=device_info, extra=extra,
    )


def input_layer_flags(inputs: Sequence[BenchInput]) -> list[str]:
    """benchmark_model's flags for ``inputs`` (in the model's order): every shape, and each integer input's
    value range. No flags for a single input without a range: the tool then feeds the model's own shape."""
    if not inputs or (len(inputs) == 1 and inputs[0].value_range is None):
        return []
    flags = [f"--input_layer={','.join(i.name for i in inputs)}",
             f"--input_layer_shape={':'.join(','.join(str(int(d)) for d in i.shape) for i in inputs)}"]
    ranges = [f"{i.name},{i.value_range[0]},{i.value_range[1]}" for i in inputs if i.value_range is not None]
    if ranges:
        flags.append(f"--input_layer_value_range={':'.join(ranges)}")
    return flags


def benchmark_model_command(binary: str, remote: str, *, threads: int, warmup: int, runs: int,
                            inputs: Sequence[BenchInput] = ()) -> list[str]:
    return [binary, f"--graph={remote}", f"--num_threads={threads}", f"--warmup_runs={warmup}",
            f"--num_runs={runs}", "--warmup_min_secs=0", "--min_secs=0", *input_layer_flags(inputs)]


def measure_adb(artifact: Path, *, device: AdbDevice, threads: int, warmup: int, runs: int, batch: int = 1,
                inputs: Sequence[BenchInput] = (), timeout: float = 600.0) -> DeviceLatency:
    """Latency of a .tflite ``artifact`` on an Android device, timed by benchmark_model there.

    ``inputs`` (the model's, in order) set every input's shape and the integer inputs' value ranges;
    without them benchmark_model feeds the model's own input shape and ``batch`` only labels the result.
    """
    def command(remote: str) -> list[str]:
        return benchmark_model_command(device.benchmark_model, remote, threads=threads, warmup=warmup, runs=runs,
                                       inputs=inputs)

    text, device_info = _run_on_device(artifact, ".tflite", command, device=device, threads=threads, warmup=warmup,
                                       runs=runs, timeout=timeout)
    with _tool_errors(device, text, "benchmark_model", "push TFLite's benchmark_model there and chmod +x it, or set "
                      "latency.adb.benchmark_model"):
        out = parse_benchmark_output(text)
    lat = to_latency(out, device=device, threads=threads, warmup=warmup, runs=runs,
                     batch=int(inputs[0].shape[0]) if inputs else batch, device_info=device_info)
    if inputs:
        lat.extra.update(input_shapes={i.name: list(i.shape) for i in inputs},
                         input_ranges={i.name: list(i.value_range) for i in inputs if i.value_range is not None})
    return lat


def _run_on_device(artifact: Path, suffix: str, command: Callable[[str], list[str]], *, device: AdbDevice,
                   threads: int, warmup: int, runs: int, timeout: float) -> tuple[str, str]:
    """Push ``artifact``, run ``command(remote_path)`` in adb shell, remove it; (tool output, device info)."""
    artifact = Path(artifact)
    if artifact.suffix != suffix or not artifact.is_file():
        raise ConfigError(f"{device.where}: {artifact} is not a {suffix} file")
    if threads < 1 or warmup < 0 or runs < 1:
        raise ConfigError(f"{device.where}: need threads >= 1, warmup >= 0, runs >= 1 (got {threads}, {warmup}, {runs})")
    adb = _Adb(device)
    adb.check_attached()
    info = adb.shell("uname -srm; getprop ro.product.model", timeout=ADB_SLACK_S)
    remote = f"{device.workdir.rstrip('/')}/edgeforge-{secrets.token_hex(4)}{suffix}"
    adb.run(["push", str(artifact), remote], timeout=ADB_SLACK_S + artifact.stat().st_size / 1e6, what="push")
    try:
        proc = adb.shell(shlex.join(command(remote)), timeout=timeout)
    finally:
        try:
            adb.shell(f"rm -f {shlex.quote(remote)}", timeout=ADB_SLACK_S)
        except RemoteError:
            pass  # a failed clean-up must not hide the result or the original error
    text = proc.stdout + "\n" + proc.stderr
    if proc.returncode == 127:
        text += "\nnot found (exit 127)"
    return text, one_line(info.stdout, 200)


@contextmanager
def _tool_errors(device: AdbDevice, text: str, tool: str, fix: str) -> Iterator[None]:
    """A parser's ValueError becomes DeviceRuntimeMissing (the binary is absent) or DeviceBenchFailed."""
    try:
        yield
    except ValueError as exc:
        low = text.lower()
        if "not found" in low or "inaccessible" in low or "permission denied" in low:
            raise DeviceRuntimeMissing(f"{device.where}: cannot run {device.benchmark_model} "
                                       f"({one_line(str(exc), 120)}); {fix}") from None
        raise DeviceBenchFailed(f"{device.where}: {tool} gave no result: {one_line(str(exc))}") from None


class _Adb:
    def __init__(self, device: AdbDevice) -> None:
        self.device = device
        if shutil.which(device.adb) is None:
            raise RemoteError(f"'{device.adb}' is not installed on this machine; install Android platform tools "
                              "(apt-get install -y adb)")

    def run(self, args: list[str], *, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
        argv = [self.device.adb, "-s", self.device.serial, *args]
        try:
            proc = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceBenchFailed(f"{self.device.where}: {what} did not finish within {timeout:.0f} s; check the "
                                    "device, or lower validation.runs") from None
        if what not in ("shell", "get-state") and proc.returncode != 0:
            raise RemoteError(f"{self.device.where}: adb {what} failed ({one_line(proc.stderr or proc.stdout)})")
        return proc

    def shell(self, command: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
        return self.run(["shell", command], timeout=timeout, what="shell")

    def check_attached(self) -> None:
        proc = self.run(["get-state"], timeout=ADB_SLACK_S, what="get-state")
        state = proc.stdout.strip()
        if proc.returncode == 0 and state == "device":
            return
        msg = (proc.stderr + " " + state).lower()
        if "unauthorized" in msg:
            raise DeviceAuthFailed(f"{self.device.where}: not authorised; accept the USB debugging prompt on the "
                                   "device, then retry")
        if "offline" in msg:
            raise DeviceUnreachable(f"{self.device.where}: offline; reconnect it (or 'adb reconnect') and retry")
        raise DeviceUnreachable(f"{self.device.where}: not attached ({one_line(proc.stderr or state, 120)}); "
                                "'adb devices' lists the serials this machine sees; fix latency.adb.serial")


# --- ExecuTorch: executor_runner ----------------------------------------------------------------
#
# ExecuTorch's pip wheel ships no device binary; ``executor_runner`` (portable kernels) or
# ``xnn_executor_runner`` (built with -DEXECUTORCH_BUILD_XNNPACK=ON) is built from ExecuTorch's
# sources with the Android NDK and pushed to the device. It feeds every input all ones (prepare_input_tensors;
# newer builds can also read raw --inputs files, which edgeforge does not rely on) and logs through ET_LOG
# (per examples/portable/executor_runner/executor_runner.cpp):
#
#     Model loaded in X ms.                                      (newer builds)
#     Iteration i of N: X ms                                     (newer builds, one per execution)
#     Model executed successfully N time(s) in X ms.
#
# It has no warm-up flag: edgeforge runs warmup + runs executions and drops the first ``warmup``
# iterations. A build without per-iteration lines gives only the mean over all executions
# (warm-up included), which ``extra["mean_includes_warmup"]`` says. Same caveat as above: the
# parser is tested on these lines, not against a real phone.

_ET_TOTAL = re.compile(rf"Model executed successfully (\d+) time\(s\) in {_NUM} ms")
_ET_ITER = re.compile(rf"Iteration (\d+) of (\d+): {_NUM} ms")
_ET_LOAD = re.compile(rf"Model loaded in {_NUM} ms")


@dataclass
class RunnerOutput:
    count: int  # executions, warm-up included
    total_ms: float
    load_ms: float | None
    iterations_ms: list[float]  # after warm-up; empty on builds without per-iteration lines


def parse_executor_runner_output(text: str, *, warmup: int) -> RunnerOutput:
    """executor_runner's timings; ValueError (with its first error line, if any) when it has no result."""
    total = _ET_TOTAL.search(text)
    if total is None:
        errors = [ln.strip() for ln in text.splitlines() if ln.startswith("E ") or "failed" in ln.lower()]
        raise ValueError(errors[0] if errors else "no 'Model executed successfully' line in executor_runner's output")
    load = _ET_LOAD.search(text)
    return RunnerOutput(count=int(total.group(1)), total_ms=float(total.group(2)),
                        load_ms=float(load.group(1)) if load else None,
                        iterations_ms=[float(m.group(3)) for m in _ET_ITER.finditer(text)][warmup:])


def runner_latency(out: RunnerOutput, *, device: AdbDevice, threads: int, warmup: int,
                   device_info: str = "") -> DeviceLatency:
    import numpy as np

    samples = out.iterations_ms

    def pct(q: float) -> float | None:
        return float(np.percentile(samples, q)) if samples else None

    mean = sum(samples) / len(samples) if samples else out.total_ms / max(out.count, 1)
    return DeviceLatency(
        batch=1, threads=threads, warmup=warmup if samples else 0, runs=len(samples) or out.count,
        load_ms=out.load_ms if out.load_ms is not None else float("nan"), p50_ms=pct(50), p90_ms=pct(90),
        p99_ms=pct(99), mean_ms=mean, measured_on=device.label, samples_ms=samples,
        runtime="executorch executor_runner", device=device_info,
        extra={"executor_runner": device.benchmark_model, "mean_includes_warmup": not samples},
    )


def check_runner_inputs(inputs: Sequence[BenchInput], device: AdbDevice) -> None:
    """executor_runner feeds all ones and takes no value range: refuse a model for which 1 is not a valid value.

    Ones are valid token ids in any vocabulary of two or more tokens, and a mask of ones is a full
    sequence, so text models are timed on valid (if repetitive) inputs; never on ids outside the table.
    """
    for i in inputs:
        if i.value_range is not None and not i.value_range[0] <= 1 <= i.value_range[1]:
            raise ConfigError(f"{device.where}: executor_runner feeds every input all ones, but input '{i.name}' "
                              f"takes values {i.value_range[0]}..{i.value_range[1]}; time this model over SSH "
                              "(latency.measured_on: ssh), where each input gets values in its range")


def measure_adb_executorch(artifact: Path, *, device: AdbDevice, threads: int, warmup: int, runs: int,
                           inputs: Sequence[BenchInput] = (), timeout: float = 600.0) -> DeviceLatency:
    """Latency of a .pte ``artifact`` on an Android device, timed there by ExecuTorch's executor_runner.

    ``device.benchmark_model`` is the runner's path on the device. It feeds the program's own input
    shapes, all ones; ``inputs`` are only checked to take ones (``check_runner_inputs``).
    """
    check_runner_inputs(inputs, device)

    def command(remote: str) -> list[str]:
        return [device.benchmark_model, f"--model_path={remote}", f"--num_executions={warmup + runs}",
                f"--cpu_threads={threads}"]

    text, device_info = _run_on_device(artifact, ".pte", command, device=device, threads=threads, warmup=warmup,
                                       runs=runs, timeout=timeout)
    with _tool_errors(device, text, "executor_runner", "build ExecuTorch's xnn_executor_runner for Android, push it "
                      "there and chmod +x it, or set executorch.adb_runner"):
        out = parse_executor_runner_output(text, warmup=warmup)
    lat = runner_latency(out, device=device, threads=threads, warmup=warmup, device_info=device_info)
    if inputs:
        lat.extra["input_fill"] = "ones"  # executor_runner's; every value range above was checked to hold 1
    return lat
