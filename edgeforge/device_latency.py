"""Latency where the device is: dispatch a target's latency measurement to its SSH or adb runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from .config import ValidationConfig
from .targets import TargetProfile


def measure_on_device(target: TargetProfile, artifact: Path, validation: ValidationConfig) -> dict[str, Any]:
    """Run the artifact's latency benchmark on the profile's device; raises EdgeforgeError subclasses."""
    spec = target.latency
    if spec.measured_on == "ssh" and spec.ssh is not None:
        from .remote.ssh import SshDevice, measure_ssh

        s = spec.ssh
        device = SshDevice(host=s.host, user=s.user, port=s.port, key=Path(s.key).expanduser() if s.key else None,
                           python=s.python, workdir=s.workdir, connect_timeout=s.connect_timeout,
                           known_hosts=Path(s.known_hosts).expanduser() if s.known_hosts else None)
        fmt: Literal["onnx", "tflite"] = "tflite" if target.format == "tflite" else "onnx"
        return measure_ssh(artifact, device=device, format=fmt, threads=target.runtime.threads,
                           warmup=validation.warmup, runs=validation.runs).as_dict()
    if spec.measured_on == "adb" and spec.adb is not None:
        from .remote.adb import AdbDevice, measure_adb

        a = spec.adb
        device_a = AdbDevice(serial=a.serial, benchmark_model=a.benchmark_model, workdir=a.workdir, adb=a.adb)
        return measure_adb(artifact, device=device_a, threads=target.runtime.threads, warmup=validation.warmup,
                           runs=validation.runs).as_dict()
    raise ValueError(f"no device runner for measured_on={spec.measured_on}")
