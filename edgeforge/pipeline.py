"""The build pipeline: plan (checked before any training), distill, QAT, then export + validate per target.

Stages transform a Carrier; this module owns folders, the stage cache, the manifest and the exit code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import StageCache, atomic_copy, atomic_write_text, save_torch, stage_key
from .carrier import Carrier
from .config import LoadedConfig, load_config
from .data import DataBundle, calibration_split, load_data
from .errors import EdgeforgeError, RuntimeUnavailable
from .exporters import get_exporter
from .exporters.base import temp_path_for
from .factories import add_search_paths
from .gate import Check, evaluate_gate
from .models.loading import build_student, check_outputs, load_teacher
from .models.students import count_parameters
from .runtimes import get_runtime
from .runtimes.torch_ref import TorchSession
from .targets import TargetProfile, resolve
from .training import NonFiniteLoss, progress_enabled
from .validate import Accuracy, artifact_digest, artifact_metrics, measure_latency, sha256_file

EXIT_OK, EXIT_ERROR, EXIT_GATE = 0, 1, 2
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Plan:
    lc: LoadedConfig
    targets: list[TargetProfile]
    data: DataBundle
    teacher: nn.Module
    student: nn.Module
    teacher_digest: str
    teacher_bytes: int


@dataclass
class BuildResult:
    exit_code: int
    manifest_path: Path
    report_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return list(self.manifest.get("gate", {}).get("failures", []))


def _teacher_identity(lc: LoadedConfig, teacher: nn.Module) -> tuple[str, int]:
    t = lc.config.teacher
    source = t.checkpoint or t.torchscript or t.program
    if source:
        path = lc.resolve(source)
        return sha256_file(path), path.stat().st_size
    buf = io.BytesIO()
    torch.save(teacher.state_dict(), buf)
    import hashlib

    return hashlib.sha256(buf.getvalue()).hexdigest(), buf.tell()


def plan_build(lc: LoadedConfig, target_names: list[str] | None = None) -> Plan:
    """Everything that can be checked before training: targets, exporters, data, models, shapes."""
    cfg = lc.config
    add_search_paths([lc.root, Path.cwd()])
    targets = resolve(target_names or cfg.targets, [lc.resolve(d) for d in cfg.target_dirs])
    for t in targets:
        try:
            exporter = get_exporter(t.format)
        except EdgeforgeError as exc:
            raise EdgeforgeError(f"target {t.name}: {exc}") from None
        if t.precision not in exporter.precisions:
            raise EdgeforgeError(
                f"target {t.name}: {t.format} precision '{t.precision}' is not supported "
                f"(supported: {', '.join(exporter.precisions)}); fix 'precision' in its profile"
            )
    data = load_data(lc)
    lc.calibration()  # parse errors surface now, not after training
    teacher = load_teacher(lc)
    example = data.train.x[:2]
    check_outputs(teacher, example, data.num_classes, "teacher")
    torch.manual_seed(cfg.distill.seed)  # the student's initial weights are part of the build's identity
    student = build_student(lc, data.input_shape[0], data.num_classes)
    student.eval()
    check_outputs(student, example, data.num_classes, "student")
    digest, nbytes = _teacher_identity(lc, teacher)
    return Plan(lc, targets, data, teacher, student, digest, nbytes)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("edgeforge", "torch", "torchao", "numpy", "onnx", "onnxscript", "onnxruntime", "coremltools",
                "litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _when(record: dict[str, Any], cached: bool) -> str:
    return " (cached)" if cached else f" in {record['seconds']:.1f} s"


def _keep_last_good(exc: NonFiniteLoss, path: Path) -> EdgeforgeError:
    """Save the best state seen before training diverged, and say where it is."""
    if not exc.last_good:
        return EdgeforgeError(f"{exc} (it diverged in the first epoch: no checkpoint to keep)")
    save_torch(exc.last_good, path)
    return EdgeforgeError(f"{exc} (the last good checkpoint is kept in {path})")


def _run_preflight(plan: Plan, cache: StageCache, log: Log) -> dict[str, Any]:
    from .preflight import PreflightFailed, run_preflight

    cfg = plan.lc.config
    key = stage_key("preflight", student=cfg.student.model_dump(mode="json"), shape=list(plan.data.input_shape),
                    classes=plan.data.num_classes, targets=[t.model_dump(mode="json") for t in plan.targets],
                    versions=_versions())
    hit = cache.lookup("preflight", key)
    if hit is not None:
        log(f"[preflight] {len(plan.targets)} target(s) ok (cached)")
        return {**json.loads((hit / "done.json").read_text()), "cached": True}
    results = run_preflight(plan, log)
    failed = [r.message for r in results if not r.ok]
    if failed:
        raise PreflightFailed(failed)
    _, record, _ = cache.run("preflight", key, lambda _f: {"ran": True, "targets": [r.as_dict() for r in results]})
    return {**record, "cached": False}


def _run_distill(plan: Plan, cache: StageCache, log: Log) -> tuple[nn.Module, dict[str, Any]]:
    from .distill import distill

    cfg = plan.lc.config
    key = stage_key("distill", config=cfg.distill.model_dump(mode="json"), student=cfg.student.model_dump(mode="json"),
                    teacher=plan.teacher_digest, data=plan.data.digest(), augmented=cfg.data.augmented)

    def produce(folder: Path) -> dict[str, Any]:
        log(f"[distill] {cfg.distill.epochs} epochs, T={cfg.distill.temperature}, alpha={cfg.distill.alpha}")
        try:
            out = distill(plan.teacher, plan.student, plan.data, cfg.distill, augmented=cfg.data.augmented,
                          show_progress=progress_enabled(cfg.progress))
        except NonFiniteLoss as exc:
            raise _keep_last_good(exc, cache.root.parent / "student_float.last_good.pt") from None
        save_torch(out.student.state_dict(), folder / "student.pt")
        r = out.result
        return {"best_epoch": r.best_epoch, "best_val_top1": r.best_val_top1, "seconds": r.seconds,
                "samples_per_second": r.samples_per_second, "history": [vars(h) for h in r.history]}

    folder, record, cached = cache.run("distill", key, produce)
    plan.student.load_state_dict(torch.load(folder / "student.pt", weights_only=True))
    plan.student.eval()
    record = {**record, "cached": cached, "key": key}
    log(f"[distill] best val top-1 {record['best_val_top1']:.4f} at epoch {record['best_epoch']}"
        + _when(record, cached))
    return plan.student, record


def _run_qat(plan: Plan, distill_key: str, cache: StageCache, log: Log) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    from .quant.qat import load_carrier, quantization_aware_training, save_carrier

    cfg = plan.lc.config
    cal = plan.lc.calibration()
    key = stage_key("qat", config=cfg.qat.model_dump(mode="json"), distill=distill_key,
                    calibration=cal.model_dump(mode="json"), data=plan.data.digest())

    def produce(folder: Path) -> dict[str, Any]:
        log(f"[qat] {cfg.qat.epochs} epochs int8 QAT (w: per-channel symmetric, a: per-tensor affine"
            f"{', learned ranges' if cfg.qat.learn_ranges else ''})")
        calib = calibration_split(plan.data, cal)
        try:
            out = quantization_aware_training(
                plan.student, plan.teacher, plan.data, calib, cfg.qat, temperature=cfg.distill.temperature,
                alpha=cfg.distill.alpha, show_progress=progress_enabled(cfg.progress))
        except NonFiniteLoss as exc:
            raise _keep_last_good(exc, cache.root.parent / "student_qat.last_good.pt") from None
        save_carrier(out.converted, plan.data.train.x, str(folder / "student_qat.pt2"))
        r = out.result
        return {"best_epoch": r.best_epoch, "best_val_top1": r.best_val_top1, "seconds": r.seconds,
                "samples_per_second": r.samples_per_second, "history": [vars(h) for h in r.history],
                "convert_max_abs_diff": out.convert_max_diff, "quantize_ops": out.quantized_ops,
                "calibration": {"name": cal.name, "samples": len(calib), "split": cal.split,
                                "selection": cal.selection, "seed": cal.seed}}

    folder, record, cached = cache.run("qat", key, produce)
    converted = load_carrier(str(folder / "student_qat.pt2"))
    record = {**record, "cached": cached, "key": key}
    log(f"[qat] best val top-1 {record['best_val_top1']:.4f} at epoch {record['best_epoch']}"
        + _when(record, cached))
    return converted, record


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _validate_target(
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
    reason = runtime.unavailable_reason()
    if reason:
        log(f"[{target.name}] unvalidated: {reason}")
        return {**entry, "status": "unvalidated", "reason": reason,
                "checks": [Check("validated", False, None, None, f"not run in its runtime: {reason}").as_dict()]}
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


def all_target_names(lc: LoadedConfig) -> list[str]:
    from .targets import available

    return list(available([lc.resolve(d) for d in lc.config.target_dirs]))


def preflight(config: str | Path | LoadedConfig, *, overrides: dict[str, Any] | None = None,
              targets: list[str] | None = None, all_targets: bool = False, log: Log = _stderr) -> list[Any]:
    """Check every target can take the (untrained) student; raises PreflightFailed naming each problem."""
    from .preflight import PreflightFailed, run_preflight

    lc = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    plan = plan_build(lc, all_target_names(lc) if all_targets else targets)
    results = run_preflight(plan, log)
    failed = [r.message for r in results if not r.ok]
    if failed:
        raise PreflightFailed(failed)
    return results


def build(config: str | Path | LoadedConfig, *, overrides: dict[str, Any] | None = None,
          targets: list[str] | None = None, all_targets: bool = False, log: Log = _stderr) -> BuildResult:
    lc = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    cfg = lc.config
    t_start = time.perf_counter()
    stage_times: dict[str, float] = {}
    t = time.perf_counter()
    plan = plan_build(lc, all_target_names(lc) if all_targets else targets)
    stage_times["plan"] = time.perf_counter() - t
    out_dir = lc.output_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EdgeforgeError(f"output: cannot write to {out_dir} ({exc.strerror}); set 'output' to a writable folder") from None
    from .lock import OutputLock

    try:
        with OutputLock(out_dir):
            return _build_locked(lc, plan, out_dir, stage_times, t_start, log)
    except OSError as exc:  # a full disk, a folder made read-only mid-build
        where = exc.filename or out_dir
        raise EdgeforgeError(f"output: cannot write {where} ({exc.strerror or exc}); free space or set a "
                             "different 'output' (finished stages stay cached)") from None


def _build_locked(lc: LoadedConfig, plan: Plan, out_dir: Path, stage_times: dict[str, float], t_start: float,
                  log: Log) -> BuildResult:
    cfg = lc.config
    cache = StageCache(out_dir / "cache")
    log(f"[plan] {len(plan.targets)} target(s): {', '.join(t.name for t in plan.targets)}; "
        f"data {len(plan.data.train)}/{len(plan.data.val)}/{len(plan.data.test)} (train/val/test), "
        f"{plan.data.num_classes} classes")

    preflight_rec: dict[str, Any] = {"ran": False}
    if cfg.preflight:
        t = time.perf_counter()
        preflight_rec = _run_preflight(plan, cache, log)
        stage_times["preflight"] = time.perf_counter() - t
    t = time.perf_counter()
    student, distill_rec = _run_distill(plan, cache, log)
    stage_times["distill"] = time.perf_counter() - t
    t = time.perf_counter()
    converted, qat_rec = _run_qat(plan, distill_rec["key"], cache, log)
    stage_times["qat"] = time.perf_counter() - t

    atomic_copy(cache.folder("distill", distill_rec["key"]) / "student.pt", out_dir / "student_float.pt")
    atomic_copy(cache.folder("qat", qat_rec["key"]) / "student_qat.pt2", out_dir / "student_qat.pt2")

    t = time.perf_counter()
    x_test, y_test = plan.data.test.x.numpy(), plan.data.test.y.numpy()
    refs: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for name, model in (("teacher", plan.teacher), ("float_student", student), ("qat_simulation", converted)):
        logits = TorchSession(model).run_all(x_test, cfg.validation.batch_size)
        acc = Accuracy.of(logits, y_test, plan.data.num_classes)
        refs[name] = logits
        models[name] = {"top1": acc.top1, "per_class_top1": acc.per_class}
    refs["teacher_top1"] = models["teacher"]["top1"]
    refs["float_top1"] = models["float_student"]["top1"]
    refs["qat_top1"] = models["qat_simulation"]["top1"]
    models["teacher"].update(parameters=count_parameters(plan.teacher), bytes=plan.teacher_bytes,
                             sha256=plan.teacher_digest)
    models["float_student"].update(parameters=count_parameters(student), path="student_float.pt",
                                   sha256=sha256_file(out_dir / "student_float.pt"))
    from .quant.qat import carrier_digest

    models["qat_simulation"].update(path="student_qat.pt2", sha256=sha256_file(out_dir / "student_qat.pt2"),
                                    content_sha256=carrier_digest(converted))
    log(f"[reference] test top-1: teacher {refs['teacher_top1']:.4f}, float student {refs['float_top1']:.4f}, "
        f"QAT simulation {refs['qat_top1']:.4f}")
    stage_times["reference_eval"] = time.perf_counter() - t

    carrier = Carrier(student, converted, plan.data.input_shape, plan.data.num_classes, plan.data.class_names,
                      calibration_split(plan.data, lc.calibration()).x, name=cfg.name)
    entries = []
    t = time.perf_counter()
    for target in plan.targets:
        entries.append(_validate_target(target, carrier, plan, out_dir, refs, log))
    stage_times["targets"] = time.perf_counter() - t
    stage_times["total"] = time.perf_counter() - t_start

    errors = [f"{e['name']}: {e['reason']}" for e in entries if e["status"] == "failed"]
    failures = [f"{e['name']}: {c['name']}: {c['message']}" for e in entries for c in e["checks"] if not c["passed"]]
    from .manifest import make_manifest
    from .html_report import render_html
    from .report import render_report

    manifest = make_manifest(
        lc=lc, plan=plan, versions=_versions(), stage_times=stage_times,
        stages={"preflight": preflight_rec, "distill": distill_rec, "qat": qat_rec}, models=models, targets=entries,
        gate={"passed": False, "errors": errors, "failures": failures}, exit_code=EXIT_ERROR)
    if cfg.baseline:
        from .regression import compare, read_manifest

        reg = compare(manifest, read_manifest(lc.resolve(cfg.baseline), "baseline"), cfg.regression)
        manifest["regression"] = {"baseline": str(lc.resolve(cfg.baseline)), "notes": reg.notes,
                                  "comparisons": [vars(c) for c in reg.comparisons]}
        failures += [f"{c.target}: regression {c.check}: {c.message}" for c in reg.failures]
    exit_code = EXIT_ERROR if errors else (EXIT_GATE if failures else EXIT_OK)
    manifest["gate"]["passed"] = exit_code == EXIT_OK
    manifest["exit_code"] = exit_code
    manifest_path = out_dir / "manifest.json"
    report_path = out_dir / "report.md"
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=float) + "\n")
    atomic_write_text(report_path, render_report(manifest))
    atomic_write_text(out_dir / "report.html", render_html(manifest))
    log(f"[done] {'PASS' if exit_code == 0 else 'FAIL'} in {stage_times['total']:.1f} s: {manifest_path}")
    for f in errors + failures:
        log(f"  - {f}")
    return BuildResult(exit_code, manifest_path, report_path, manifest)
