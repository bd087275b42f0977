"""The build: plan (checked before any training), then the stages through the engine, then the manifest.

Stages transform; the engine caches and records; this module owns the output folder, the order
of stages, the manifest, the reports and the exit code.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .cache import StageCache, atomic_copy
from .config import LoadedConfig, load_config
from .engine import Engine, Outcome, Stage, check_order
from .errors import EdgeforgeError
from .plan import Plan, all_target_names, plan_build
from .records import TargetResult
from .stages import DistillStage, PreflightStage, QatStage, ReferenceStage
from .target_stages import ExportStage, GateStage, ValidateStage, place_artifact, remove_path
from .targets import TargetProfile

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


def _load(config: str | Path | LoadedConfig, overrides: dict[str, Any] | None, targets: list[str] | None,
          all_targets: bool) -> tuple[LoadedConfig, Plan]:
    lc = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    return lc, plan_build(lc, all_target_names(lc) if all_targets else targets)


def preflight(config: str | Path | LoadedConfig, *, overrides: dict[str, Any] | None = None,
              targets: list[str] | None = None, all_targets: bool = False, log: Log = _stderr) -> list[Any]:
    """Check every target can take the (untrained) student; raises PreflightFailed naming each problem."""
    from .preflight import PreflightFailed, run_preflight

    _, plan = _load(config, overrides, targets, all_targets)
    results = run_preflight(plan, log)
    failed = [r.message for r in results if not r.ok]
    if failed:
        raise PreflightFailed(failed)
    return results


def build(config: str | Path | LoadedConfig, *, overrides: dict[str, Any] | None = None,
          targets: list[str] | None = None, all_targets: bool = False, log: Log = _stderr) -> BuildResult:
    """Run a build. Under torchrun every rank trains; rank 0 alone writes, exports and validates."""
    from .distributed import join, leave

    t_start = time.perf_counter()
    lc, plan = _load(config, overrides, targets, all_targets)
    plan = replace(plan, ranks=join(plan.compute))
    try:
        if not plan.ranks.leader:
            return _train_as_worker(plan)
        return _build_as_leader(plan, t_start, log)
    finally:
        leave(plan.ranks)


def _build_as_leader(plan: Plan, t_start: float, log: Log) -> BuildResult:
    out_dir = plan.lc.output_dir
    _claim_output(out_dir, plan.lc.root, log)
    from .lock import OutputLock

    try:
        with OutputLock(out_dir):
            return _build_locked(plan, out_dir, t_start, log)
    except OSError as exc:  # a full disk, a folder made read-only mid-build
        where = exc.filename or out_dir
        raise EdgeforgeError(f"output: cannot write {where} ({exc.strerror or exc})",
                             fix="free space or set a different 'output' (finished stages stay cached)") from None


TRAINING = ("distill", "qat")


def _train_as_worker(plan: Plan) -> BuildResult:
    """A rank other than 0: train the stages rank 0 does not find in its cache, write nothing, exit 0."""
    if plan.ranks.broadcast_object(None):
        DistillStage(plan).train()
    if plan.ranks.broadcast_object(None):
        student = plan.new_student()
        plan.ranks.broadcast_state(student)  # rank 0's distilled student, trained now or from its cache
        QatStage(plan).train(student)
    out = plan.lc.output_dir
    return BuildResult(EXIT_OK, out / "manifest.json", out / "report.md")


def _run_model_stage(engine: Engine, plan: Plan, stage: Stage[Any]) -> Outcome[Any]:
    """Rank 0 tells the other ranks whether a training stage runs (not cached) before it runs it."""
    if plan.ranks.active and stage.kind in TRAINING:
        runs = not engine.is_cached(stage)
        plan.ranks.broadcast_object(runs)
        if runs and stage.kind == "qat":
            plan.ranks.broadcast_state(engine.outputs["distill"])
    return engine.run(stage)


def _claim_output(out_dir: Path, config_dir: Path, log: Log) -> None:
    from .outdir import claim_output, clean_stale_temps

    claim_output(out_dir, config_dir=config_dir)
    try:
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EdgeforgeError(f"output: cannot write to {out_dir} ({exc.strerror})",
                             fix="set 'output' to a writable folder") from None
    clean_stale_temps(out_dir, log)


def model_stages(plan: Plan, log: Log) -> list[Stage[Any]]:
    pre: list[Stage[Any]] = [PreflightStage(plan, log)] if plan.lc.config.preflight else []
    return [*pre, DistillStage(plan, log), QatStage(plan, log), ReferenceStage(plan, log)]


def target_stages(plan: Plan, target: TargetProfile) -> list[Stage[Any]]:
    return [ExportStage(plan, target), ValidateStage(plan, target), GateStage(plan, target)]


def _build_locked(plan: Plan, out_dir: Path, t_start: float, log: Log) -> BuildResult:
    d, c, r = plan.data, plan.compute, plan.ranks
    log(f"[plan] {len(plan.targets)} target(s): {', '.join(t.name for t in plan.targets)}; "
        f"data {len(d.train)}/{len(d.val)}/{len(d.test)} (train/val/test), {d.num_classes} classes; "
        f"training on {c.device} ({c.precision}{f', {r.world} ranks, {r.backend}' if r.active else ''})")
    engine = Engine(StageCache(out_dir / "cache"), log)
    stages = model_stages(plan, log)
    per_target = {t.name: target_stages(plan, t) for t in plan.targets}
    check_order([*stages, *(s for ss in per_target.values() for s in ss)])
    outcomes = {s.name: _run_model_stage(engine, plan, s) for s in stages}
    atomic_copy(engine.cache.folder("distill", engine.keys["distill"]) / "student.pt", out_dir / "student_float.pt")
    atomic_copy(engine.cache.folder("qat", engine.keys["qat"]) / "student_qat.pt2", out_dir / "student_qat.pt2")
    results = [_run_target(engine, plan, t, per_target[t.name], out_dir, log) for t in plan.targets]
    _prune_stale(out_dir, {t.name for t in plan.targets}, log)
    from .manifest import write_outputs

    return write_outputs(plan, engine, outcomes, results, out_dir, time.perf_counter() - t_start, log)


def _run_target(engine: Engine, plan: Plan, target: TargetProfile, stages: list[Stage[Any]], out_dir: Path,
                log: Log) -> TargetResult:
    from .target_stages import metrics_from

    result = TargetResult(target.name, target.format, target.precision, target.description,
                          target.device.model_dump(mode="json"), target.runtime.threads,
                          plan.gates[target.name].model_dump(mode="json"), "failed")
    got: dict[str, Outcome[Any]] = {}
    for stage in stages:
        outcome = engine.try_run(stage)
        if isinstance(outcome, EdgeforgeError):
            result.reason = str(outcome)
            log(f"[{stage.name}] failed: {outcome}")
            if stage.kind == "export":
                remove_path(out_dir / "targets" / target.name)  # never leave an older artifact beside a failure
            break
        got[stage.kind] = outcome
    result.stages = [r for s in stages if (r := engine.run_of(s.name)) is not None]
    if "export" in got:
        exported = got["export"].value
        place_artifact(exported, out_dir)
        result.artifact, result.export_seconds = exported.artifact, exported.seconds
    if "validate" in got:
        rec = got["validate"].record
        result.status, result.runtime = rec["status"], rec["runtime"]
        result.reason = rec.get("reason")
        if rec["status"] == "validated":
            result.executor, result.runtime_graph, result.metrics = rec["executor"], rec["runtime_graph"], metrics_from(rec)
    if "gate" in got:
        result.checks = got["gate"].value
    return result


def _prune_stale(out_dir: Path, keep: set[str], log: Log) -> None:
    from .stale import prune_stale_targets

    prune_stale_targets(out_dir, keep, log)


__all__ = ["EXIT_ERROR", "EXIT_GATE", "EXIT_OK", "BuildResult", "Plan", "build", "plan_build", "preflight"]
