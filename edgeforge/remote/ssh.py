"""Measure latency on a device reached over SSH, with the system OpenSSH client (ssh, scp).

The device needs an SSH server, a Python with numpy and the format's runtime (onnxruntime for
ONNX; ai-edge-litert, or tflite-runtime, for TFLite; executorch, with torch, for ExecuTorch). Per run: make a private folder under the
device's work dir, scp the artifact and ``device_bench.py`` into it, run the benchmark with the
device's Python, parse its one JSON line, remove the folder (also on failure).

The client runs with BatchMode (never prompts), IdentitiesOnly with the given key, and, unless a
``known_hosts`` file is given, a throw-away known_hosts that accepts the device's key on first
contact: no file outside the run is touched, but the host key is not pinned across runs.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from . import (
    BenchInput,
    DeviceAuthFailed,
    DeviceBenchFailed,
    DeviceLatency,
    DeviceRuntimeMissing,
    DeviceUnreachable,
    RemoteError,
    one_line,
)

BENCH_SCRIPT = Path(__file__).with_name("device_bench.py")
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}  # the formats device_bench.py runs
CONNECT_SLACK_S = 30.0  # beyond ConnectTimeout: auth, mkdir and copying a few MB


@dataclass(frozen=True)
class SshDevice:
    host: str
    user: str
    port: int = 22
    key: Path | None = None  # None: the client's default keys / agent
    python: str = "python3"  # the device's interpreter, a name on its PATH or an absolute path
    workdir: str = "/tmp"  # absolute; a private edgeforge.XXXXXX folder is made inside, then removed
    connect_timeout: int = 10
    known_hosts: Path | None = None  # pin host keys with this file (StrictHostKeyChecking=yes)

    @property
    def label(self) -> str:
        return f"ssh:{self.user}@{self.host}"

    @property
    def where(self) -> str:
        return f"ssh device {self.user}@{self.host}:{self.port}"


def measure_ssh(
    artifact: Path, *, device: SshDevice, format: Literal["onnx", "tflite", "executorch"], threads: int, warmup: int,
    runs: int, inputs: Sequence[BenchInput] = (), input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None, timeout: float = 600.0,
) -> DeviceLatency:
    """Batch latency of ``artifact`` on ``device``, timed there by ``device_bench.py``.

    ``inputs`` are every input the caller expects the model to take, in its order: their shapes fill
    the model's dynamic dimensions, a disagreement with its signature (count, rank, static size, kind
    of dtype) is an error naming the input, and integer inputs are drawn from their ``value_range``.
    ``input_shape``/``input_dtype`` describe only the first input (older callers; ignored with ``inputs``).
    """
    artifact = Path(artifact)
    if format not in SUFFIXES:
        raise ConfigError(f"{device.where}: format '{format}' cannot be timed over SSH; use {', '.join(SUFFIXES)}")
    if not artifact.is_file():
        raise ConfigError(f"{device.where}: artifact {artifact} does not exist")
    if device.key is not None and not Path(device.key).is_file():
        raise ConfigError(f"{device.where}: key file {device.key} does not exist; set latency.ssh.key to a private key")
    if threads < 1 or warmup < 0 or runs < 1:
        raise ConfigError(f"{device.where}: need threads >= 1, warmup >= 0, runs >= 1 (got {threads}, {warmup}, {runs})")
    for tool in ("ssh", "scp"):
        if shutil.which(tool) is None:
            raise RemoteError(f"'{tool}' is not installed on this machine; install it with: apt-get install -y openssh-client")

    with tempfile.TemporaryDirectory(prefix="edgeforge-ssh-") as tmp:
        client = _Client(device, Path(tmp))
        remote_dir = client.make_dir()
        try:
            model = f"{remote_dir}/model{SUFFIXES[format]}"
            client.copy(artifact, model)
            client.copy(BENCH_SCRIPT, f"{remote_dir}/device_bench.py")
            cmd = [device.python, f"{remote_dir}/device_bench.py", "--model", model, "--format", format,
                   "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs)]
            if inputs:
                cmd += ["--inputs", json.dumps([i.as_json() for i in inputs], separators=(",", ":"))]
            if input_shape is not None and not inputs:
                cmd += ["--shape", ",".join(str(int(d)) for d in input_shape)]
            if input_dtype is not None and not inputs:
                cmd += ["--dtype", input_dtype]
            proc = client.ssh(shlex.join(cmd), timeout=timeout, what="the benchmark")
        finally:
            client.remove(remote_dir)
    return parse_bench_output(proc.stdout, proc.stderr, proc.returncode, device)


def parse_bench_output(stdout: str, stderr: str, returncode: int, device: SshDevice) -> DeviceLatency:
    """Turn ``device_bench.py``'s JSON line (or its absence) into a result or one clear error."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.lstrip().startswith("{")), None)
    if line is None:
        if returncode == 127:
            raise DeviceRuntimeMissing(
                f"{device.where}: Python '{device.python}' was not found there; set latency.ssh.python to the "
                "device's interpreter (e.g. /usr/bin/python3)")
        detail = one_line(stderr.strip().splitlines()[-1] if stderr.strip() else "no output")
        raise DeviceBenchFailed(f"{device.where}: the benchmark printed no result (exit {returncode}: {detail}); "
                                f"check that '{device.python}' there is Python 3.7 or newer")
    try:
        out = json.loads(line)
    except json.JSONDecodeError:
        raise DeviceBenchFailed(f"{device.where}: the benchmark printed a line that is not JSON "
                                f"({one_line(line, 120)}); check that '{device.python}' is a Python 3") from None
    if not out.get("ok"):
        msg = one_line(str(out.get("message", "unknown error")))
        if out.get("error") == "missing_module":
            module = out.get("module", "the runtime")
            raise DeviceRuntimeMissing(f"{device.where}: {msg}; install it there (pip package "
                                       f"'{_PIP_NAMES.get(module, module)}') or point latency.ssh.python at a "
                                       "Python that has it")
        if out.get("error") == "shape_mismatch":
            raise DeviceBenchFailed(f"{device.where}: {msg}; the target's input spec and the artifact disagree")
        raise DeviceBenchFailed(f"{device.where}: {msg}")
    try:
        return DeviceLatency(
            batch=int(out["batch"]), threads=int(out["threads"]), warmup=int(out["warmup"]), runs=int(out["runs"]),
            load_ms=float(out["load_ms"]), p50_ms=float(out["p50_ms"]), p90_ms=float(out["p90_ms"]),
            p99_ms=float(out["p99_ms"]), mean_ms=float(out["mean_ms"]), measured_on=device.label,
            samples_ms=[float(v) for v in out.get("samples_ms", [])],
            runtime=str(out["runtime"]), runtime_version=str(out["runtime_version"]), device=str(out["uname"]),
            extra={"input_shape": out.get("input_shape"), "input_dtype": out.get("input_dtype"),
                   "input_shapes": out.get("input_shapes"), "input_dtypes": out.get("input_dtypes"),
                   "input_ranges": out.get("input_ranges"), "python": out.get("python")},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DeviceBenchFailed(f"{device.where}: the benchmark's result lacks or mangles {exc}; the device's "
                                "device_bench.py may be from another edgeforge version") from None


_PIP_NAMES = {"onnxruntime": "onnxruntime", "ai_edge_litert": "ai-edge-litert", "numpy": "numpy",
              "executorch.runtime": "executorch"}


class _Client:
    """ssh/scp with one set of options, mapping the client's failures to one-line errors."""

    def __init__(self, device: SshDevice, tmp: Path) -> None:
        self.device = device
        d = device
        if d.known_hosts is not None:
            hosts = ["-o", f"UserKnownHostsFile={d.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        else:
            hosts = ["-o", f"UserKnownHostsFile={tmp / 'known_hosts'}", "-o", "StrictHostKeyChecking=accept-new"]
        self.opts = ["-o", "BatchMode=yes", *hosts, "-o", f"ConnectTimeout={d.connect_timeout}",
                     "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if d.key is not None:
            self.opts += ["-i", str(d.key), "-o", "IdentitiesOnly=yes"]
        self.target = f"{d.user}@{d.host}"
        # scp reads host:path, so an IPv6 literal needs brackets there.
        self.scp_target = f"{d.user}@[{d.host}]" if ":" in d.host else self.target

    def ssh(self, command: str, *, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self.opts, "-p", str(self.device.port), self.target, command]
        return self._run(argv, timeout, what)

    def make_dir(self) -> str:
        base = shlex.quote(self.device.workdir.rstrip("/") or "/")
        proc = self.ssh(f"mkdir -p {base} && mktemp -d {base}/edgeforge.XXXXXX",
                        timeout=self.device.connect_timeout + CONNECT_SLACK_S, what="making the work dir")
        path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0 or not path.startswith("/"):
            raise RemoteError(f"{self.device.where}: cannot make a folder in {self.device.workdir} "
                              f"({one_line(proc.stderr) or 'no output'}); set latency.ssh.workdir to a writable "
                              "absolute path")
        return path

    def copy(self, local: Path, remote: str) -> None:
        argv = ["scp", "-q", *self.opts, "-P", str(self.device.port), str(local), f"{self.scp_target}:{remote}"]
        proc = self._run(argv, self.device.connect_timeout + CONNECT_SLACK_S + local.stat().st_size / 1e6,
                         f"copying {local.name}")
        if proc.returncode != 0:
            raise RemoteError(f"{self.device.where}: copying {local.name} failed ({one_line(proc.stderr)}); check "
                              f"free space and permissions in {self.device.workdir}")

    def remove(self, remote_dir: str) -> None:
        # Best effort: a failed clean-up must not hide the result or the original error.
        try:
            self.ssh(f"rm -rf {shlex.quote(remote_dir)}", timeout=self.device.connect_timeout + CONNECT_SLACK_S,
                     what="clean-up")
        except RemoteError:
            pass

    def _run(self, argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceBenchFailed(f"{self.device.where}: {what} did not finish within {timeout:.0f} s; check the "
                                    "device's load, or lower validation.runs") from None
        if proc.returncode == 255:  # ssh's own failure, not the remote command's
            raise _connection_error(self.device, proc.stderr)
        return proc


def _connection_error(d: SshDevice, stderr: str) -> RemoteError:
    err = stderr.lower()
    detail = one_line(stderr, 160) or "ssh exited 255 with no message"
    if "could not resolve hostname" in err or "name or service not known" in err:
        return DeviceUnreachable(f"{d.where}: host name '{d.host}' does not resolve; fix latency.ssh.host")
    if "connection refused" in err:
        return DeviceUnreachable(f"{d.where}: connection refused, nothing accepts SSH on port {d.port}; check "
                                 "latency.ssh.port and that sshd runs on the device")
    if "timed out" in err or "no route to host" in err or "network is unreachable" in err:
        return DeviceUnreachable(f"{d.where}: no answer ({detail}); check that the device is on and reachable "
                                 "from this machine")
    if "host key verification failed" in err or "remote host identification has changed" in err:
        return DeviceAuthFailed(f"{d.where}: its host key does not match {d.known_hosts or 'known_hosts'}; "
                                "update that file if the device was re-imaged")
    if "permission denied" in err or "too many authentication failures" in err:
        key = d.key or "your default SSH key"
        return DeviceAuthFailed(f"{d.where}: the device refused key authentication ({detail}); add the public "
                                f"key of {key} to ~{d.user}/.ssh/authorized_keys there, or set latency.ssh.key/user")
    if "load key" in err or "unprotected private key" in err or "invalid format" in err:
        return DeviceAuthFailed(f"{d.where}: cannot use key {d.key} ({detail}); it must be a private key readable "
                                "only by you (chmod 600)")
    return DeviceUnreachable(f"{d.where}: ssh failed ({detail})")
