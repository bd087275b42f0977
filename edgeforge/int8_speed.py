"""Flag int8 artifacts that run slower than their fp32 partner on the build host.

int8 is not faster everywhere: on x86 without VNNI, onnxruntime's U8U8 convolutions and its float
islands (ops with no int8 kernel, computed between DequantizeLinear and QuantizeLinear) can make an
int8 file slower than the fp32 one (see benchmarks/bench_int8_speed.py). A build that made both
and timed both on this host says so, per format, instead of leaving it to a reader of the tables.
"""

from __future__ import annotations

from .records import Int8Slowdown, Latency, TargetResult


def host_p50(t: TargetResult) -> float | None:
    """The target's batch latency on the build host (p50 ms), whether or not a device was timed too."""
    m = t.metrics
    if m is None or t.status == "failed":
        return None
    lat: Latency | None = m.host_latency or (m.latency if m.latency and m.latency.measured_on == "host" else None)
    return lat.p50_ms if lat is not None and lat.p50_ms is not None and lat.p50_ms > 0 else None


def slowdown_message(s: Int8Slowdown) -> str:
    return (f"{s.int8_target}: int8 {s.int8_ms:.3f} ms is {s.ratio:.2f}x slower than fp32 {s.fp32_ms:.3f} ms "
            f"({s.fp32_target}) on this host (format {s.format})")


def int8_slowdowns(targets: list[TargetResult]) -> list[Int8Slowdown]:
    """Every int8 target slower than the fastest fp32 target of its format timed with the same threads."""
    timed = [(t, ms) for t in targets if (ms := host_p50(t)) is not None]
    out: list[Int8Slowdown] = []
    for t, ms in timed:
        if t.precision != "int8":
            continue
        partners = [(f, f_ms) for f, f_ms in timed
                    if f.precision == "fp32" and f.format == t.format and f.threads == t.threads]
        if not partners:
            continue
        fp32, fp32_ms = min(partners, key=lambda p: p[1])
        if ms <= fp32_ms:
            continue
        s = Int8Slowdown(t.format, t.name, fp32.name, ms, fp32_ms, ms / fp32_ms, "")
        s.message = slowdown_message(s)
        out.append(s)
    return out
