"""One target: export (atomically), open in its runtime, validate on the test split, gate."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .carrier import Carrier
from .errors import EdgeforgeError, RuntimeUnavailable
from .exporters import get_exporter
from .exporters.base import temp_path_for
from .gate import Check, evaluate_gate
from .plan import Plan
from .runtimes import get_runtime
from .targets import TargetProfile
from .validate import artifact_digest, artifact_metrics, measure_latency

Log = Callable[[str], None]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def build_target(
    target: TargetProfile, carrier: Carrier, plan: Plan, out_dir: Path, refs: dict[str, Any], log: Log,
) -> dict[str, Any]:
    cfg = plan.lc.config
    exporter = get_exporter(target.format)
    tdir = out_dir / "targets" / target.name
    tdir.mkdir(parents=True, exist_ok=True)
    path = tdir / f"model{exporter.suffix}"
    entry: dict[str, Any] = {"name": target.name, "format": target.format, "precision": target.precision,
                             "description": target.description, "device": target.device.model_dump(),
                             "threads": target.runtime.threads}
    tmp = temp_path_for(path)
    t0 = time.perf_counter()
    try:
        _remove(tmp)
        art = exporter.export(carrier, target, tmp)
        _remove(path)
        os.replace(tmp, path)
    except Exception as exc:
        _remove(tmp)
        _remove(path)  # never leave a previous build's artifact beside a failed export
        reason = str(exc) if isinstance(exc, EdgeforgeError) else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        log(f"[{target.name}] export failed: {reason}")
        return {**entry, "status": "failed", "reason": reason, "checks": []}
    entry["export_seconds"] = time.perf_counter() - t0
    digest, size = artifact_digest(path)
    entry["artifact"] = {"path": str(path.relative_to(out_dir)), "sha256": digest, "size_bytes": size, **art.info}
    runtime = get_runtime(target.format)
    try:
        session = runtime.open(path, target)
        logits = session.run_all(plan.data.test.x.numpy(), cfg.validation.batch_size)
    except RuntimeUnavailable as exc:
        log(f"[{target.name}] unvalidated: {exc}")
        return {**entry, "status": "unvalidated", "reason": str(exc),
                "checks": [Check("validated", False, None, None, f"not run in its runtime: {exc}").as_dict()]}
    except Exception as exc:
        reason = str(exc) if isinstance(exc, EdgeforgeError) else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        log(f"[{target.name}] runtime failed: {reason}")
        return {**entry, "status": "failed", "reason": f"{runtime.name} could not run the artifact: {reason}", "checks": []}
    is_int = target.precision == "int8"
    ref_name = "qat_simulation" if is_int else "float_student"
    metrics = artifact_metrics(
        logits=logits, labels=plan.data.test.y.numpy(), num_classes=plan.data.num_classes,
        teacher_top1=refs["teacher_top1"], reference_name=ref_name, reference_logits=refs[ref_name],
        qat_sim_top1=refs.get("qat_top1"), float_top1=refs["float_top1"])
    if session.measures_latency:
        lat = measure_latency(session, plan.data.test.x.numpy(), warmup=cfg.validation.warmup,
                              runs=cfg.validation.runs, threads=target.runtime.threads, measured_on="host")
        metrics["latency"] = lat.as_dict()
        lat_msg = f"p50 {lat.p50_ms:.3f} ms (host)"
    else:
        metrics["latency"] = None
        metrics["latency_note"] = session.latency_note
        lat_msg = f"latency: {session.latency_note}"
    metrics["size_bytes"] = entry["artifact"]["size_bytes"]
    device_check: list[Check] = []
    if target.latency.measured_on != "host":
        from .device_latency import measure_on_device

        metrics["host_latency"] = metrics["latency"]  # kept, labelled host; never shown as the device's
        try:
            metrics["latency"] = measure_on_device(target, path, cfg.validation)
            lat_msg = f"p50 {metrics['latency']['p50_ms']:.3f} ms ({metrics['latency']['measured_on']})"
        except EdgeforgeError as exc:
            metrics["latency"] = None
            metrics["latency_note"] = f"device latency failed: {exc}"
            device_check.append(Check("device_latency", False, None, None, str(exc)))
            lat_msg = "device latency FAILED"
    metrics["compression_vs_teacher"] = plan.teacher_bytes / size
    entry["executor"] = session.executor
    entry["runtime_graph"] = runtime.inspect(path)
    entry["metrics"] = metrics
    checks = device_check + evaluate_gate(target, metrics, cfg.gate, cfg.validation)
    entry["checks"] = [c.as_dict() for c in checks]
    entry["status"] = "validated"
    verdict = "pass" if all(c.passed for c in checks) else "FAIL"
    log(f"[{target.name}] validated in {session.executor}: top-1 {metrics['top1']:.4f}, retention "
        f"{metrics['retention']:.4f}, drift {metrics['drift_points']:+.2f} pt, {metrics['size_bytes'] / 1024:.1f} KiB, "
        f"{lat_msg} -> {verdict}")
    return entry


