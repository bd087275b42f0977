"""Facts about the host that change int8 numerics and speed: CPU model and instruction-set flags.

onnxruntime's and XNNPACK's int8 kernels differ between AVX2, AVX-512 VNNI, AMX and ARM dot-product
paths (and so can their results), so a manifest says which the build ran on and ``check`` compares
builds only within one host class.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# Flags (as /proc/cpuinfo spells them) that select a different int8 GEMM/conv kernel.
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown", set()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    return model, flags


def host_facts() -> dict[str, Any]:
    model, flags = _cpuinfo()
    if platform.system() == "Darwin":
        model = platform.processor() or model
    int8 = [f for f in INT8_FLAGS if f in flags]
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu": {"model": model, "int8_flags": int8, "int8_class": int8_class(platform.machine(), int8)},
            "load_average": _load_average()}


def _load_average() -> float | None:
    """The 1-minute load average as the build ends (its timings ran in the minutes before): on a shared
    machine it says whether host latency was measured on a quiet CPU."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows has no load average
        return None


def int8_class(machine: str, flags: list[str]) -> str:
    """A short name for the family of int8 kernels this CPU selects (builds compare within one)."""
    if machine in ("arm64", "aarch64"):
        return "arm64+i8mm" if "i8mm" in flags else ("arm64+dotprod" if "asimddp" in flags else "arm64")
    if "amx_int8" in flags:
        return "x86+amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "x86+vnni"
    if "avx512f" in flags:
        return "x86+avx512"
    return "x86+avx2" if "avx2" in flags else machine
