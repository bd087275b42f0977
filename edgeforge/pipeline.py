"""The build pipeline: plan (checked before any training), distill, QAT, then export + validate per target.

Stages transform a Carrier; this module owns folders, the stage cache, the manifest and the exit code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import StageCache, atomic_copy, atomic_write_text
from .carrier import Carrier
from .config import LoadedConfig, load_config
from .data import calibration_split
from .errors import EdgeforgeError
from .models.students import count_parameters
from .plan import Plan, all_target_names, plan_build, versions
from .runtimes.torch_ref import TorchSession
from .stages import run_distill_stage, run_preflight_stage, run_qat_stage
from .target_build import build_target
from .validate import Accuracy, sha256_file

EXIT_OK, EXIT_ERROR, EXIT_GATE = 0, 1, 2
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BuildResult:
    exit_code: int
    manifest_path: Path
    report_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return list(self.manifest.get("gate", {}).get("failures", []))


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
        preflight_rec = run_preflight_stage(plan, cache, log)
        stage_times["preflight"] = time.perf_counter() - t
    t = time.perf_counter()
    student, distill_rec = run_distill_stage(plan, cache, log)
    stage_times["distill"] = time.perf_counter() - t
    t = time.perf_counter()
    converted, qat_rec = run_qat_stage(plan, distill_rec["key"], cache, log)
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
                      calibration_split(plan.data, plan.calibration).x, name=cfg.name)
    entries = []
    t = time.perf_counter()
    for target in plan.targets:
        entries.append(build_target(target, carrier, plan, out_dir, refs, log))
    stage_times["targets"] = time.perf_counter() - t
    stage_times["total"] = time.perf_counter() - t_start

    errors = [f"{e['name']}: {e['reason']}" for e in entries if e["status"] == "failed"]
    failures = [f"{e['name']}: {c['name']}: {c['message']}" for e in entries for c in e["checks"] if not c["passed"]]
    from .html_report import render_html
    from .manifest import make_manifest
    from .report import render_report

    manifest = make_manifest(
        lc=lc, plan=plan, versions=versions(), stage_times=stage_times,
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


__all__ = ["EXIT_ERROR", "EXIT_GATE", "EXIT_OK", "BuildResult", "Plan", "build", "plan_build", "preflight"]
