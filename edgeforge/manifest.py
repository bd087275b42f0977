"""The build manifest: everything needed to trust, reproduce and compare a build.

Assembled from the typed records (``records.py``), versioned by ``SCHEMA_VERSION`` and written
with NaN/inf as null; its JSON Schema ships with the package (``edgeforge schema manifest``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import atomic_write_text
from .int8_speed import int8_slowdowns
from .records import SCHEMA_VERSION, Fallback, GateOutcome, Manifest, ModelRecord, TargetResult, Training
from .validate import sha256_file

if TYPE_CHECKING:
    from .engine import Engine, Outcome
    from .pipeline import BuildResult, Log
    from .plan import Plan

SCHEMA = SCHEMA_VERSION


def _models(plan: Plan, outcomes: dict[str, Outcome[Any]], out_dir: Path) -> dict[str, ModelRecord]:
    from .models.students import count_parameters
    from .quant.qat import carrier_digest

    ref = outcomes["reference"].record
    top1, per = ref["top1"], ref["per_class"]
    student, converted = outcomes["distill"].value, outcomes["qat"].value

    def judged(role: str) -> dict[str, Any]:
        return {"metric": ref["metric"], "value": ref["value"][role], "scores": ref["scores"][role]}

    return {
        "teacher": ModelRecord(top1["teacher"], per["teacher"], count_parameters(plan.teacher), plan.teacher_bytes,
                               sha256=plan.teacher_digest, **judged("teacher")),
        "float_student": ModelRecord(top1["float_student"], per["float_student"], count_parameters(student),
                                     path="student_float.pt", sha256=sha256_file(out_dir / "student_float.pt"),
                                     **judged("float_student")),
        "qat_simulation": ModelRecord(top1["qat_simulation"], per["qat_simulation"], path="student_qat.pt2",
                                      sha256=sha256_file(out_dir / "student_qat.pt2"),
                                      content_sha256=carrier_digest(converted), **judged("qat_simulation")),
    }


def _versions(plan: Plan) -> dict[str, str]:
    from .exporters import exporter_class
    from .plan import versions

    return versions(tuple(sorted({p for t in plan.targets for p in exporter_class(t.format).packages})))


def _fallback(outcomes: dict[str, Outcome[Any]]) -> Fallback | None:
    record = outcomes["qat"].record.get("fallback")
    return Fallback.from_dict(record) if record else None


def make_manifest(plan: Plan, engine: Engine, outcomes: dict[str, Outcome[Any]], targets: list[TargetResult],
                  out_dir: Path, seconds: float) -> Manifest:
    from .hostinfo import host_facts

    lc, data, cfg = plan.lc, plan.data, plan.lc.config
    stages = {name: {**o.record, "cached": o.run.cached, "key": o.run.key, "seconds_this_build": o.run.seconds}
              for name, o in outcomes.items()}
    errors = [f"{t.name}: {t.reason}" for t in targets if t.status == "failed"]
    failures = [f"{t.name}: {c.name}: {c.message}" for t in targets for c in t.checks if not c.passed]
    return Manifest(
        schema=SCHEMA_VERSION, name=cfg.name, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        host=host_facts(), versions=_versions(plan),
        config={"path": str(lc.path), "sha256": lc.digest(), "file_sha256": sha256_file(lc.path),
                "resolved": cfg.model_dump(mode="json")},
        data={"sha256": data.digest(), "input_shape": list(data.input_shape), "num_classes": data.num_classes,
              "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "vocab_size": i.vocab_size}
                         for i in data.inputs],
              "class_names": data.class_names, "code_sha256": plan.data_code,
              "splits": {s.name: {"samples": len(s), "sha256": s.digest()} for s in (data.train, data.val, data.test)}},
        seed={"distill": cfg.distill.seed, "qat": cfg.qat.seed},
        stage_seconds={**{r.name: r.seconds for r in engine.runs}, "total": seconds},
        stages=stages, models=_models(plan, outcomes, out_dir), targets=targets, fallback=_fallback(outcomes),
        gate=GateOutcome(False, errors, failures), exit_code=1, training=_training(plan))


def _training(plan: Plan) -> Training:
    c, r = plan.compute, plan.ranks
    return Training(str(c.device), c.name(), c.precision, processes=r.world, backend=r.backend)  # type: ignore[arg-type]


def write_outputs(plan: Plan, engine: Engine, outcomes: dict[str, Outcome[Any]], targets: list[TargetResult],
                  out_dir: Path, seconds: float, log: Log) -> BuildResult:
    from .html_report import render_html
    from .pipeline import EXIT_ERROR, EXIT_GATE, EXIT_OK, BuildResult
    from .report import render_report

    m = make_manifest(plan, engine, outcomes, targets, out_dir, seconds)
    m.int8_slower = int8_slowdowns(targets)
    cfg = plan.lc.config
    if cfg.baseline:
        from .regression import compare, read_manifest

        baseline = plan.lc.resolve(cfg.baseline)
        reg = compare(m.to_json_dict(), read_manifest(baseline, "baseline"), cfg.regression)
        m.regression = {"baseline": str(baseline), "differences": reg.differences, "notes": reg.notes,
                        "comparisons": [vars(c) for c in reg.comparisons]}
        m.gate.failures += [f"{c.target}: regression {c.check}: {c.message}" for c in reg.failures]
    m.exit_code = EXIT_ERROR if m.gate.errors else (EXIT_GATE if m.gate.failures else EXIT_OK)
    m.gate.passed = m.exit_code == EXIT_OK
    data = m.to_json_dict()
    manifest_path, report_path = out_dir / "manifest.json", out_dir / "report.md"
    atomic_write_text(manifest_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(report_path, render_report(data))
    atomic_write_text(out_dir / "report.html", render_html(data))
    cached = [r.name for r in engine.runs if r.cached]
    log(f"[done] {'PASS' if m.exit_code == 0 else 'FAIL'} in {seconds:.1f} s: {manifest_path}"
        + (f" ({len(cached)} of {len(engine.runs)} stages from the cache)" if cached else ""))
    for f in m.gate.errors + m.gate.failures:
        log(f"  - {f}")
    return BuildResult(m.exit_code, manifest_path, report_path, data)
