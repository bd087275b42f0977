"""Remote latency: the SSH runner against a real sshd on 127.0.0.1, the adb runner against a fake adb.

The sshd is private to the test module: its own host key, config, authorized_keys and pid file in a
temp dir, a free loopback port, stopped in teardown. The "device" Python is this interpreter, so
the device has numpy and onnxruntime; a missing runtime is provoked with a format whose runtime
this interpreter lacks, and with the system Python.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from edgeforge.remote import (
    BenchInput,
    DeviceAuthFailed,
    DeviceBenchFailed,
    DeviceRuntimeMissing,
    DeviceUnreachable,
    RemoteError,
)
from edgeforge.remote.adb import (
    AdbDevice,
    check_runner_inputs,
    measure_adb,
    measure_adb_executorch,
    parse_benchmark_output,
    to_latency,
)
from edgeforge.remote.ssh import BENCH_SCRIPT, SshDevice, measure_ssh, parse_bench_output
from edgeforge.validate import Latency

SSHD = "/usr/sbin/sshd"
needs_sshd = pytest.mark.skipif(
    not Path(SSHD).exists() or not all(shutil.which(t) for t in ("ssh", "scp", "ssh-keygen")),
    reason="needs OpenSSH server and client: apt-get install -y openssh-server openssh-client",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not accept connections on port {port} within {deadline_s} s: {log.read_text()}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    if not Path(SSHD).exists():
        pytest.skip(f"{SSHD} is missing: apt-get install -y openssh-server openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(d / "host_key")
    client_key = _keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {host_key}
        PidFile {d / 'sshd.pid'}
        AuthorizedKeysFile {d / 'authorized_keys'}
        StrictModes no
        UsePAM no
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        Subsystem sftp internal-sftp
        """))
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege-separation dir; systemd's unit makes it at boot.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = d / "sshd.log"
    with open(log, "wb") as log_f:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log_f, stderr=log_f,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_for_banner(port, proc, log)
        yield {"port": port, "key": client_key, "dir": d}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=["input"], output_names=["logits"],
                      dynamo=False)
    return path


VOCAB, SEQ = 50, 8  # the two-input model's vocabulary and sequence length


def _text_model() -> tuple[object, tuple[object, ...]]:
    """A text model taking int64 token ids and an attention mask (embedding, masked mean, linear), and examples."""
    import torch
    from torch import nn

    class MaskedMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, 3)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            m = attention_mask.unsqueeze(-1).float()
            return self.head((self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0))

    torch.manual_seed(0)
    return MaskedMean().eval(), (torch.zeros(1, SEQ, dtype=torch.int64), torch.ones(1, SEQ, dtype=torch.int64))


@pytest.fixture(scope="module")
def two_input_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    import torch

    net, ex = _text_model()
    path = tmp_path_factory.mktemp("text") / "text.onnx"
    torch.onnx.export(net, ex, str(path), input_names=["input_ids", "attention_mask"],  # type: ignore[arg-type]
                      output_names=["logits"], dynamo=False)
    return path


def _token_specs(ids: tuple[int, int] = (0, VOCAB - 1), **mask: object) -> list[BenchInput]:
    base: dict[str, object] = {"name": "attention_mask", "shape": (1, SEQ), "dtype": "int64", "value_range": (1, 1)}
    base.update(mask)
    return [BenchInput("input_ids", (1, SEQ), "int64", ids), BenchInput(**base)]  # type: ignore[arg-type]


def _bench_locally(model: Path, specs: list[BenchInput], fmt: str = "onnx") -> tuple[int, dict[str, object]]:
    """device_bench.py run as on a device (a subprocess of this interpreter); (exit code, its JSON line)."""
    argv = [sys.executable, str(BENCH_SCRIPT), "--model", str(model), "--format", fmt, "--warmup", "1",
            "--runs", "5", "--inputs", json.dumps([s.as_json() for s in specs])]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    return proc.returncode, json.loads(lines[0])


def _device(sshd: dict[str, object], **changes: object) -> SshDevice:
    workdir = Path(sshd["dir"]) / "remote"  # type: ignore[arg-type]
    base = {"host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(), "key": sshd["key"],
            "python": sys.executable, "workdir": str(workdir)}
    base.update(changes)
    return SshDevice(**base)  # type: ignore[arg-type]


def _one_line_naming(exc: pytest.ExceptionInfo[RemoteError], *names: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in names:
        assert n in msg, msg
    return msg


# --- SSH against a real sshd -------------------------------------------------------------------

@pytest.mark.ssh
@needs_sshd
def test_ssh_measures_latency_on_the_device(sshd: dict[str, object], tiny_onnx: Path) -> None:
    dev = _device(sshd)
    lat = measure_ssh(tiny_onnx, device=dev, format="onnx", threads=1, warmup=3, runs=25,
                      input_shape=(1, 3, 16, 16), input_dtype="float32")
    assert lat.p50_ms is not None and lat.p90_ms is not None and lat.p99_ms is not None
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms
    assert lat.runs == 25 and lat.warmup == 3 and lat.threads == 1 and lat.batch == 1
    assert lat.load_ms > 0 and lat.mean_ms > 0
    assert lat.measured_on == f"ssh:{getpass.getuser()}@127.0.0.1"
    assert lat.runtime == "onnxruntime" and lat.runtime_version
    assert lat.device.startswith("Linux ")
    assert lat.extra["input_shape"] == [1, 3, 16, 16] and len(lat.samples_ms) == 25
    d = lat.as_dict()
    assert {f.name for f in fields(Latency)} <= d.keys()
    Latency(**{f.name: d[f.name] for f in fields(Latency)})  # the manifest's latency record, as on the host
    leftovers = list(Path(dev.workdir).glob("edgeforge.*"))
    assert leftovers == [], f"remote files not cleaned up: {leftovers}"


@pytest.mark.ssh
@pytest.mark.tflite
@needs_sshd
def test_ssh_measures_tflite_latency_on_the_device(sshd: dict[str, object], tmp_path: Path) -> None:
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert.interpreter")
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    path = tmp_path / "tiny.tflite"
    litert_torch.convert(net, (torch.randn(1, 3, 16, 16),)).export(str(path))
    lat = measure_ssh(path, device=_device(sshd), format="tflite", threads=2, warmup=2, runs=10,
                      input_shape=(1, 3, 16, 16), input_dtype="float32")
    assert lat.p50_ms is not None and lat.p90_ms is not None and lat.p99_ms is not None
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms and lat.runs == 10 and lat.threads == 2
    assert lat.runtime == "ai_edge_litert" and lat.runtime_version != "unknown"
    with pytest.raises(DeviceBenchFailed) as exc:  # the expected shape disagrees with the model's
        measure_ssh(path, device=_device(sshd), format="tflite", threads=1, warmup=0, runs=1,
                    input_shape=(1, 16, 16, 3))
    _one_line_naming(exc, "127.0.0.1", "[1, 3, 16, 16]", "[1, 16, 16, 3]")


# --- several named, typed inputs -----------------------------------------------------------------

def test_device_bench_feeds_every_input_by_name_inside_its_range(two_input_onnx: Path) -> None:
    rc, out = _bench_locally(two_input_onnx, _token_specs()[::-1])  # spec order differs: matched by name
    assert rc == 0 and out["ok"], out
    assert out["input_shapes"] == {"input_ids": [1, SEQ], "attention_mask": [1, SEQ]}
    assert out["input_dtypes"] == {"input_ids": "int64", "attention_mask": "int64"}
    ranges = out["input_ranges"]
    assert isinstance(ranges, dict) and ranges["attention_mask"] == [1, 1]
    low, high = ranges["input_ids"]
    assert 0 <= low and high < VOCAB and high > 1  # random ids, all inside the vocabulary
    assert out["input_shape"] == [1, SEQ] and out["batch"] == 1 and out["runs"] == 5  # older callers' fields
    # The control: ids beyond the table make onnxruntime's Gather fail, so the run above was fed in-range ids.
    rc, out = _bench_locally(two_input_onnx, _token_specs(ids=(0, VOCAB + 200)))
    assert rc == 2 and out["error"] == "run_failed", out


@pytest.mark.parametrize(("change", "named"), [
    ({"shape": (1, 2 * SEQ)}, ["attention_mask", f"[1, {SEQ}]", f"[1, {2 * SEQ}]"]),
    ({"shape": (1, SEQ, 1)}, ["attention_mask", "rank 2"]),
    ({"dtype": "float32", "value_range": None}, ["attention_mask", "int64", "float32"]),
    ({"name": "token_type_ids"}, ["token_type_ids", "input_ids, attention_mask"]),
])
def test_device_bench_spec_mismatch_is_one_line_naming_the_input(two_input_onnx: Path, change: dict[str, Any],
                                                                 named: list[str]) -> None:
    rc, out = _bench_locally(two_input_onnx, _token_specs(**change))
    assert rc == 2 and out["ok"] is False and out["error"] == "shape_mismatch", out
    msg = str(out["message"])
    assert "\n" not in msg and all(n in msg for n in named), msg


def test_device_bench_input_count_and_malformed_specs(two_input_onnx: Path) -> None:
    rc, out = _bench_locally(two_input_onnx, _token_specs()[:1])
    assert rc == 2 and out["error"] == "shape_mismatch", out
    assert "takes 2 input(s) (input_ids, attention_mask)" in str(out["message"]), out
    rc, out = _bench_locally(two_input_onnx, _token_specs(value_range=(1, 0)))
    assert rc == 2 and out["error"] == "bad_inputs" and "attention_mask" in str(out["message"]), out


@pytest.mark.tflite
def test_device_bench_feeds_a_two_input_tflite_model_by_position(tmp_path: Path) -> None:
    """litert-torch names the inputs args_0, args_1 and narrows int64 ids to int32: matched by position."""
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert.interpreter")
    net, ex = _text_model()
    path = tmp_path / "text.tflite"
    litert_torch.convert(net, ex).export(str(path))
    rc, out = _bench_locally(path, _token_specs(), fmt="tflite")
    assert rc == 0 and out["ok"], out
    assert out["input_dtypes"] == {"input_ids": "int32", "attention_mask": "int32"}
    ranges = out["input_ranges"]
    assert isinstance(ranges, dict) and 0 <= ranges["input_ids"][0] and ranges["input_ids"][1] < VOCAB
    rc, out = _bench_locally(path, _token_specs(shape=(1, SEQ + 1)), fmt="tflite")
    assert rc == 2 and out["error"] == "shape_mismatch" and "input 'attention_mask'" in str(out["message"]), out


@pytest.mark.ssh
@needs_sshd
def test_ssh_times_a_two_input_model(sshd: dict[str, object], two_input_onnx: Path) -> None:
    lat = measure_ssh(two_input_onnx, device=_device(sshd), format="onnx", threads=1, warmup=1, runs=5,
                      inputs=_token_specs())
    assert lat.p50_ms is not None and lat.p50_ms > 0 and lat.runs == 5
    assert lat.extra["input_shapes"] == {"input_ids": [1, SEQ], "attention_mask": [1, SEQ]}
    assert 0 <= lat.extra["input_ranges"]["input_ids"][0] <= lat.extra["input_ranges"]["input_ids"][1] < VOCAB
    with pytest.raises(DeviceBenchFailed) as exc:
        measure_ssh(two_input_onnx, device=_device(sshd), format="onnx", threads=1, warmup=0, runs=1,
                    inputs=_token_specs(dtype="float32", value_range=None))
    _one_line_naming(exc, "127.0.0.1", "input 'attention_mask'", "float32", "input spec")


def test_device_inputs_from_the_carrier_and_target() -> None:
    from edgeforge.inputs import image_inputs, token_inputs
    from edgeforge.runtimes.base import device_inputs
    from edgeforge.targets import TargetProfile

    onnx = TargetProfile.model_validate({"name": "t", "format": "onnx", "precision": "int8"})
    assert device_inputs(token_inputs(SEQ, VOCAB), onnx) == tuple(_token_specs())
    tfl = TargetProfile.model_validate({"name": "t", "format": "tflite", "precision": "int8",
                                        "input": {"layout": "NHWC", "dtype": "int8", "batch": 4}})
    assert device_inputs(image_inputs((3, 16, 16)), tfl) == (BenchInput("input", (4, 16, 16, 3), "int8"),)


@pytest.mark.ssh
@needs_sshd
def test_ssh_wrong_port_is_one_line_naming_the_host(sshd: dict[str, object], tiny_onnx: Path) -> None:
    port = _free_port()
    with pytest.raises(DeviceUnreachable) as exc:
        measure_ssh(tiny_onnx, device=_device(sshd, port=port, connect_timeout=3), format="onnx", threads=1,
                    warmup=0, runs=1)
    _one_line_naming(exc, "127.0.0.1", str(port), "latency.ssh.port")


@pytest.mark.ssh
@needs_sshd
def test_ssh_unknown_key_is_an_auth_error(sshd: dict[str, object], tiny_onnx: Path, tmp_path: Path) -> None:
    stranger = _keygen(tmp_path / "stranger")
    with pytest.raises(DeviceAuthFailed) as exc:
        measure_ssh(tiny_onnx, device=_device(sshd, key=stranger), format="onnx", threads=1, warmup=0, runs=1)
    _one_line_naming(exc, "127.0.0.1", "authorized_keys")


@pytest.mark.ssh
@needs_sshd
def test_ssh_device_without_the_runtime(sshd: dict[str, object], tiny_onnx: Path, tmp_path: Path) -> None:
    # A device Python with numpy but no onnxruntime: this interpreter, with a stub package first on
    # its path whose import fails the way a missing one does.
    hide = tmp_path / "hide" / "onnxruntime"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('no onnxruntime on this device')\n")
    python = tmp_path / "device-python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={hide.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    with pytest.raises(DeviceRuntimeMissing) as exc:
        measure_ssh(tiny_onnx, device=_device(sshd, python=str(python)), format="onnx", threads=1, warmup=0, runs=1)
    _one_line_naming(exc, "127.0.0.1", "onnxruntime is not installed", "pip package 'onnxruntime'")


@pytest.mark.ssh
@needs_sshd
def test_ssh_device_python_without_numpy_or_missing(sshd: dict[str, object], tiny_onnx: Path) -> None:
    with pytest.raises(DeviceRuntimeMissing) as exc:
        measure_ssh(tiny_onnx, device=_device(sshd, python="/nonexistent/python3"), format="onnx", threads=1,
                    warmup=0, runs=1)
    _one_line_naming(exc, "127.0.0.1", "/nonexistent/python3", "latency.ssh.python")
    system = "/usr/bin/python3"  # Debian's: numpy and onnxruntime are not apt-installed here
    if not Path(system).exists() or subprocess.run([system, "-c", "import numpy, onnxruntime"],
                                                   check=False, capture_output=True).returncode == 0:
        return
    with pytest.raises(DeviceRuntimeMissing) as exc:
        measure_ssh(tiny_onnx, device=_device(sshd, python=system), format="onnx", threads=1, warmup=0, runs=1)
    _one_line_naming(exc, "127.0.0.1", f"is not installed in {system}")


def test_ssh_output_that_is_not_json_is_one_line() -> None:
    dev = SshDevice(host="board.local", user="pi")
    with pytest.raises(DeviceBenchFailed) as exc:
        parse_bench_output("{oops this is not json\n", "", 0, dev)
    _one_line_naming(exc, "pi@board.local", "not JSON")
    with pytest.raises(DeviceBenchFailed) as exc:
        parse_bench_output("", "Traceback (most recent call last):\nSyntaxError: invalid syntax\n", 1, dev)
    _one_line_naming(exc, "board.local", "SyntaxError")
    with pytest.raises(DeviceBenchFailed) as exc:
        parse_bench_output(json.dumps({"ok": True, "p50_ms": 1.0}), "", 0, dev)
    _one_line_naming(exc, "board.local")


def test_ssh_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    from edgeforge.errors import ConfigError

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(ConfigError, match="key file .* does not exist"):
        measure_ssh(model, device=SshDevice(host="h", user="u", key=tmp_path / "nope"), format="onnx",
                    threads=1, warmup=0, runs=1)


# --- adb: benchmark_model's output -------------------------------------------------------------
# FORMAT EXAMPLES, not measurements: the line shapes follow benchmark_model.cc (BenchmarkModel::Run,
# BenchmarkLoggingListener::OnBenchmarkEnd) and stats_calculator.h (Stat / StatWithPercentiles).
# No device was attached; the numbers summarise a made-up series of per-run times, computed as those
# sources do (int64 microseconds; std truncated to an integer; percentile = sorted[n * p / 100]):
#   warm-up runs (us): 3000, 1000, 1000
#   timed runs  (us): 1100, then 1000 x 17, then 900, 1500
FORMAT_EXAMPLE_NEW = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [20]
INFO: Min runs duration (seconds): [0]
INFO: Num threads: [2]
INFO: Min warmup runs: [3]
INFO: Min warmup runs duration (seconds): [0]
INFO: Graph: [/data/local/tmp/edgeforge-0a1b2c3d.tflite]
INFO: #threads used for CPU inference: [2]
INFO: Loaded model /data/local/tmp/edgeforge-0a1b2c3d.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.5
INFO: Initialized session in 5ms.
INFO: Running benchmark for at least 3 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=3 first=3000 curr=1000 min=1000 max=3000 avg=1666.67 std=942 p5=1000 median=1000 p95=3000

INFO: Running benchmark for at least 20 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=20 first=1100 curr=1500 min=900 max=1500 avg=1025 std=113 p5=1000 median=1000 p95=1500

INFO: Inference timings in us: Init: 5000, First inference: 3000, Warmup (avg): 1666.67, Inference (avg): 1025
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the \
actual memory footprint of the model at runtime. Take the information at your discretion.
"""

# Older builds: no "INFO: " prefix, no percentiles; the same made-up series.
FORMAT_EXAMPLE_OLD = """\
Loaded model /data/local/tmp/edgeforge-0a1b2c3d.tflite
Initialized session in 5ms.
Running benchmark for at least 3 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=3 first=3000 curr=1000 min=1000 max=3000 avg=1666.67 std=942

Running benchmark for at least 20 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=20 first=1100 curr=1500 min=900 max=1500 avg=1025 std=113

Inference timings in us: Init: 5000, First inference: 3000, Warmup (avg): 1666.67, Inference (avg): 1025
"""

# Failure shape (ERROR lines from the interpreter, then the tool's own).
FORMAT_EXAMPLE_FAILURE = """\
INFO: Loaded model /data/local/tmp/edgeforge-0a1b2c3d.tflite
ERROR: Failed to allocate tensors!
ERROR: Benchmarking failed.
"""


def test_parse_benchmark_model_with_percentiles() -> None:
    out = parse_benchmark_output(FORMAT_EXAMPLE_NEW)
    assert (out.init_us, out.first_inference_us, out.warmup_avg_us, out.inference_avg_us) == (5000, 3000, 1666.67, 1025)
    assert out.warmup is not None and out.warmup.count == 3 and out.warmup.max_us == 3000
    inf = out.inference
    assert inf is not None
    assert (inf.count, inf.min_us, inf.max_us, inf.avg_us, inf.std_us) == (20, 900, 1500, 1025, 113)
    assert (inf.p5_us, inf.median_us, inf.p95_us) == (1000, 1000, 1500)
    lat = to_latency(out, device=AdbDevice("emulator-5554"), threads=2, warmup=3, runs=20)
    assert lat.measured_on == "adb:emulator-5554"
    assert (lat.runs, lat.warmup, lat.load_ms, lat.mean_ms, lat.p50_ms) == (20, 3, 5.0, 1.025, 1.0)
    assert lat.p90_ms is None and lat.p99_ms is None  # benchmark_model prints neither
    assert lat.extra["p95_ms"] == 1.5 and lat.extra["first_inference_ms"] == 3.0


def test_parse_benchmark_model_without_percentiles() -> None:
    out = parse_benchmark_output(FORMAT_EXAMPLE_OLD)
    assert out.inference is not None and out.inference.count == 20 and out.inference.median_us is None
    lat = to_latency(out, device=AdbDevice("X"), threads=1, warmup=3, runs=20)
    assert lat.p50_ms is None and lat.mean_ms == 1.025 and lat.load_ms == 5.0


def test_parse_benchmark_model_variants() -> None:
    # Op profiling tables carry "Timings (microseconds): count=..." lines; they are not run statistics.
    profiled = FORMAT_EXAMPLE_NEW + "Timings (microseconds): count=20 first=1 curr=1 min=1 max=1 avg=1 std=0\n"
    assert parse_benchmark_output(profiled).inference.count == 20  # type: ignore[union-attr]
    same = FORMAT_EXAMPLE_OLD.replace("count=3 first=3000 curr=1000 min=1000 max=3000 avg=1666.67 std=942",
                                      "count=3 curr=1000(all same)")
    w = parse_benchmark_output(same).warmup
    assert w is not None and (w.count, w.min_us, w.max_us, w.std_us) == (3, 1000, 1000, 0)
    old_summary = "Average inference timings in us: Warmup: 1666.67, Init: 5000, Inference: 1025\n"
    out = parse_benchmark_output(old_summary)
    assert (out.init_us, out.warmup_avg_us, out.inference_avg_us) == (5000, 1666.67, 1025)
    with pytest.raises(ValueError, match="Failed to allocate tensors"):
        parse_benchmark_output(FORMAT_EXAMPLE_FAILURE)


# --- adb runner against a fake adb ---------------------------------------------------------------

FAKE_ADB = """\
#!{python}
import json, sys
argv = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
serial, cmd, rest = argv[1], argv[2], argv[3:]
if serial != "FAKE123":
    sys.stderr.write("error: device '%s' not found\\n" % serial); sys.exit(1)
if cmd == "get-state":
    print("device")
elif cmd == "push":
    print("1 file pushed.")
elif cmd == "shell" and "--graph=" in rest[0]:
    sys.stdout.write(open({sample!r}).read())
elif cmd == "shell" and rest[0].startswith("uname"):
    print("Linux 5.10.0 aarch64"); print("Format Example Phone")
"""


@pytest.fixture
def fake_adb(tmp_path: Path) -> tuple[Path, Path]:
    sample, log = tmp_path / "sample.txt", tmp_path / "adb.log"
    sample.write_text(FORMAT_EXAMPLE_NEW)
    adb = tmp_path / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable, log=str(log), sample=str(sample)))
    adb.chmod(0o755)
    return adb, log


def test_adb_runner_with_a_fake_adb(fake_adb: tuple[Path, Path], tmp_path: Path) -> None:
    adb, log = fake_adb
    model = tmp_path / "m.tflite"
    model.write_bytes(b"tflite bytes")
    dev = AdbDevice("FAKE123", benchmark_model="/data/local/tmp/bm", adb=str(adb))
    lat = measure_adb(model, device=dev, threads=2, warmup=3, runs=20)
    assert lat.measured_on == "adb:FAKE123" and lat.runs == 20 and lat.p50_ms == 1.0
    assert lat.device == "Linux 5.10.0 aarch64 Format Example Phone"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    push = next(c for c in calls if c[2] == "push")
    remote = push[4]
    assert push[3] == str(model) and remote.startswith("/data/local/tmp/edgeforge-") and remote.endswith(".tflite")
    bench = next(c for c in calls if c[2] == "shell" and "/data/local/tmp/bm" in c[3])
    for flag in (f"--graph={remote}", "--num_threads=2", "--warmup_runs=3", "--num_runs=20", "--min_secs=0"):
        assert flag in bench[3].split()
    assert calls[-1] == ["-s", "FAKE123", "shell", f"rm -f {remote}"]


def test_adb_command_line_with_two_inputs(fake_adb: tuple[Path, Path], tmp_path: Path) -> None:
    adb, log = fake_adb
    model = tmp_path / "m.tflite"
    model.write_bytes(b"tflite bytes")
    dev = AdbDevice("FAKE123", benchmark_model="/data/local/tmp/bm", adb=str(adb))
    lat = measure_adb(model, device=dev, threads=1, warmup=3, runs=20, inputs=_token_specs())
    bench = next(c for c in (json.loads(ln) for ln in log.read_text().splitlines()) if "--graph=" in c[-1])
    words = shlex.split(bench[3])
    flags = dict(w.split("=", 1) for w in words[1:])
    assert words[0] == "/data/local/tmp/bm" and len(flags) == len(words) - 1  # one value per flag
    assert flags["--input_layer"] == "input_ids,attention_mask"
    assert flags["--input_layer_shape"] == f"1,{SEQ}:1,{SEQ}"
    assert flags["--input_layer_value_range"] == f"input_ids,0,{VOCAB - 1}:attention_mask,1,1"
    assert lat.extra["input_ranges"] == {"input_ids": [0, VOCAB - 1], "attention_mask": [1, 1]}
    # one float image input: no input flags, benchmark_model feeds the model's own shape as before
    measure_adb(model, device=dev, threads=1, warmup=3, runs=20,
                inputs=[BenchInput("input", (1, 3, 16, 16), "float32")])
    last = [c for c in (json.loads(ln) for ln in log.read_text().splitlines()) if "--graph=" in c[-1]][-1]
    assert "--input_layer" not in last[3]


def test_adb_executorch_refuses_inputs_the_runner_cannot_feed(tmp_path: Path) -> None:
    from edgeforge.errors import ConfigError

    dev = AdbDevice("FAKE123", benchmark_model="/data/local/tmp/xnn_executor_runner")
    check_runner_inputs(_token_specs(), dev)  # all ones: valid ids (vocabulary >= 2) and a full mask
    model = tmp_path / "m.pte"
    model.write_bytes(b"pte")
    with pytest.raises(ConfigError) as exc:
        measure_adb_executorch(model, device=dev, threads=1, warmup=0, runs=1, inputs=_token_specs(ids=(0, 0)))
    msg = str(exc.value)
    assert "\n" not in msg and "input 'input_ids'" in msg and "all ones" in msg and "measured_on: ssh" in msg


def test_adb_errors_are_one_line(fake_adb: tuple[Path, Path], tmp_path: Path) -> None:
    adb, _ = fake_adb
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    with pytest.raises(DeviceUnreachable) as exc:
        measure_adb(model, device=AdbDevice("NOPE", adb=str(adb)), threads=1, warmup=1, runs=1)
    _one_line_naming(exc, "NOPE", "adb devices")
    with pytest.raises(RemoteError) as exc:
        measure_adb(model, device=AdbDevice("FAKE123", adb=str(tmp_path / "no-adb")), threads=1, warmup=1, runs=1)
    _one_line_naming(exc, "apt-get install -y adb")


def test_build_measures_latency_on_the_ssh_device(sshd: dict[str, object], make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A whole build whose int8 target is timed on the device; host latency is kept, labelled host."""
    pytest.importorskip("onnxruntime")
    import yaml

    from edgeforge.pipeline import build

    (Path(sshd["dir"]) / "remote").mkdir(exist_ok=True)  # type: ignore[arg-type]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    ssh = {"host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(), "key": str(sshd["key"]),
           "python": sys.executable, "workdir": str(Path(sshd["dir"]) / "remote")}  # type: ignore[arg-type]
    (profiles / "board-int8.yaml").write_text(yaml.safe_dump({
        "name": "board-int8", "format": "onnx", "precision": "int8", "runtime": {"threads": 1},
        "latency": {"measured_on": "ssh", "ssh": ssh}, "gate": {"max_latency_p90_ms": 1000}}))
    cfg = make_config(targets=["board-int8"], target_dirs=[str(profiles)])
    result = build(cfg, log=lambda _m: None)
    assert result.exit_code == 0, result.failures
    t = result.manifest["targets"][0]
    assert t["metrics"]["latency"]["measured_on"] == f"ssh:{getpass.getuser()}@127.0.0.1"
    assert t["metrics"]["host_latency"]["measured_on"] == "host"
    assert any(c["name"] == "latency_p90" and "ssh:" in c["message"] for c in t["checks"])
    # an unreachable device fails the build's latency check with the reason, accuracy still validated
    ssh["port"] = _free_port()
    (profiles / "board-int8.yaml").write_text(yaml.safe_dump({
        "name": "board-int8", "format": "onnx", "precision": "int8",
        "latency": {"measured_on": "ssh", "ssh": ssh}}))
    result = build(cfg, log=lambda _m: None)
    assert result.exit_code == 2
    t = result.manifest["targets"][0]
    assert t["status"] == "validated" and t["metrics"]["latency"] is None
    assert any("device_latency" in f and "127.0.0.1" in f for f in result.failures)
