"""The stages of one target: export (cached), validate in its own runtime (cached), gate.

Everything format-specific is asked of the format's exporter and runtime; adding a target to a
finished build runs only these three stages for it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.batch import to_numpy
from .debug.in_build import output_step, verdict_over_gate
from .engine import Stage
from .errors import RuntimeUnavailable
from .exporters import get_exporter
from .gate import evaluate_gate
from .metrics import label
from .plan import Plan, versions
from .records import Artifact, Check, Latency, Metrics
from .runtimes import get_runtime
from .stages import References
from .targets import TargetProfile
from .validate import artifact_digest, artifact_metrics, measure_latency, run_split, set_logit_lsb

Log = Callable[[str], None]


def export_name(target: TargetProfile) -> str:
    return f"export:{target.name}"


def validate_name(target: TargetProfile) -> str:
    return f"validate:{target.name}"


@dataclass
class Exported:
    path: Path  # inside the stage's cache folder; the pipeline copies it into targets/<name>/
    artifact: Artifact
    seconds: float


class ExportStage(Stage[Exported]):
    kind = "export"

    def __init__(self, plan: Plan, target: TargetProfile) -> None:
        after = ("distill", "qat") if target.precision == "int8" else ("distill",)
        super().__init__(export_name(target), after)
        self.plan, self.target = plan, target
        self.exporter = get_exporter(target.format)

    def key_inputs(self) -> dict[str, Any]:
        return {"target": self.target.model_dump(mode="json"), "sections": self.target.format_sections,
                "versions": versions(self.exporter.packages)}

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        assert folder is not None
        carrier = self.plan.make_carrier(inputs["distill"], inputs.get("qat"))
        t0 = time.perf_counter()
        art = self.exporter.export(carrier, self.target, folder / f"model{self.exporter.suffix}")
        if self.target.precision == "int8":
            from .exporters.float_layers import check_float_layers

            held = check_float_layers(self.target.format, art.path, art.info, carrier, self.target.name)
            if held:
                art.info["float_layers"] = held
        digest, size = artifact_digest(art.path)
        return {"file": art.path.name, "sha256": digest, "size_bytes": size, "info": art.info,
                "digest_kind": "folder" if art.path.is_dir() else "file", "seconds": time.perf_counter() - t0}

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> Exported:
        assert folder is not None
        rel = f"targets/{self.target.name}/{record['file']}"
        art = Artifact(rel, record["sha256"], record["size_bytes"], record["digest_kind"], record["info"])
        return Exported(folder / record["file"], art, record["seconds"])

    def describe(self, record: dict[str, Any]) -> str:
        return f"{record['file']}, {record['size_bytes'] / 1024:.1f} KiB"


class ValidateStage(Stage[dict[str, Any]]):
    """Run the artifact in its own runtime on the test split; metrics against its reference; latency."""

    kind = "validate"

    def __init__(self, plan: Plan, target: TargetProfile) -> None:
        super().__init__(validate_name(target), (export_name(target), "reference"))
        self.plan, self.target = plan, target
        self.exporter = get_exporter(target.format)
        self.runtime = get_runtime(target.format, target.runtime.engine)
        self.cacheable = target.latency.measured_on == "host"  # a device is measured afresh every build

    def key_inputs(self) -> dict[str, Any]:
        return {"validation": self.plan.lc.config.validation.model_dump(mode="json"), "runtime": self.runtime.name,
                **self.plan.metric_identity(),
                "unavailable": self.runtime.unavailable_reason(), "versions": versions((self.runtime.package,))}

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        exported: Exported = inputs[export_name(self.target)]
        refs: References = inputs["reference"]
        p, t = self.plan, self.target
        try:
            session = self.runtime.open(exported.path, t)
            logits = run_split(session, p.data.test, p.lc.config.validation.batch_size, p.data.workers)
        except RuntimeUnavailable as exc:
            return {"status": "unvalidated", "reason": str(exc), "runtime": self.runtime.name}
        ref = self.exporter.reference(t)
        metrics = artifact_metrics(
            logits=logits, labels=p.data.test.y.numpy(), num_classes=p.data.num_classes, metric=p.metric,
            reference_values=refs.value, reference_name=ref, reference_logits=refs.logits[ref],
            size_bytes=exported.artifact.size_bytes, teacher_bytes=p.teacher_bytes)
        set_logit_lsb(metrics, logits, refs.logits[ref], *output_step(t, p.lc.output_dir / "student_qat.pt2"))
        metrics.first_divergent = verdict_over_gate(p, t, exported.path, metrics)
        if folder is not None:
            np.save(folder / "logits.npy", logits)
        device_error = self._latency(session, exported, metrics)
        return {"status": "validated", "runtime": self.runtime.name, "executor": session.executor,
                "runtime_graph": self.runtime.inspect(exported.path), "metrics": asdict(metrics),
                "device_error": device_error}

    def _latency(self, session: Any, exported: Exported, metrics: Metrics) -> str | None:
        v, t = self.plan.lc.config.validation, self.target
        if session.measures_latency:
            metrics.latency = measure_latency(session, to_numpy(self.plan.data.test.head(1)), warmup=v.warmup, runs=v.runs,
                                              threads=t.runtime.threads, measured_on="host")
        else:
            metrics.latency_note = session.latency_note
        if t.latency.measured_on == "host":
            return None
        from .errors import EdgeforgeError

        metrics.host_latency, metrics.latency = metrics.latency, None  # kept, labelled host; never the device's
        try:
            metrics.latency = Latency.from_dict(self.runtime.measure_on_device(t, exported.path, v, self.plan.data.inputs))
        except EdgeforgeError as exc:
            metrics.latency_note = f"device latency failed: {exc}"
            return str(exc)
        return None

    def describe(self, record: dict[str, Any]) -> str:
        if record["status"] != "validated":
            return f"unvalidated: {record['reason']}"
        m = record["metrics"]
        lat = m.get("latency")
        where = f"p50 {lat['p50_ms']:.3f} ms ({lat['measured_on']})" if lat and lat.get("p50_ms") is not None \
            else f"latency: {m.get('latency_note') or 'not measured'}"
        named = "" if m["metric"] == "top1" else f", {label(m['metric'])} {m['value']:.4f}"
        return (f"in {record['executor']}: top-1 {m['top1']:.4f}{named}, drift {m['drift_points']:+.2f} pt vs "
                f"{m['reference']}, agreement {m['agreement']:.4f}, {where}")


def metrics_from(record: dict[str, Any]) -> Metrics:
    m = dict(record["metrics"])
    for k in ("latency", "host_latency"):
        m[k] = Latency.from_dict(m[k]) if m.get(k) else None
    if m.get("first_divergent"):
        from .records import FirstDivergent

        m["first_divergent"] = FirstDivergent(**m["first_divergent"])
    return Metrics(**m)


class GateStage(Stage[list[Check]]):
    """The target's checks: its format's rules for the written file, then its effective gate."""

    kind = "gate"
    cacheable = False

    def __init__(self, plan: Plan, target: TargetProfile) -> None:
        super().__init__(f"gate:{target.name}", (export_name(target), validate_name(target)))
        self.plan, self.target = plan, target
        self.exporter = get_exporter(target.format)

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        exported: Exported = inputs[export_name(self.target)]
        validated: dict[str, Any] = inputs[validate_name(self.target)]
        checks = self.exporter.artifact_checks(exported.artifact.info, self.target)
        if validated["status"] != "validated":
            checks.append(Check("validated", False, None, None, f"not run in its runtime: {validated['reason']}"))
        else:
            if validated.get("device_error"):
                checks.append(Check("device_latency", False, None, None, validated["device_error"]))
            parity = self.exporter.parity_atol(self.target, self.plan.lc.config.validation)
            checks += evaluate_gate(metrics_from(validated), self.plan.gates[self.target.name], parity)
        return {"checks": [c.as_dict() for c in checks]}

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> list[Check]:
        return [Check(**c) for c in record["checks"]]

    def describe(self, record: dict[str, Any]) -> str:
        failed = [c["name"] for c in record["checks"] if not c["passed"]]
        return "pass" if not failed else f"FAIL ({', '.join(failed)})"


def place_artifact(exported: Exported, out_dir: Path) -> Path:
    """Copy a (cached) artifact into targets/<name>/ atomically; a folder artifact is copied whole."""
    dest = out_dir / exported.artifact.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    remove_path(tmp)
    if exported.path.is_dir():
        shutil.copytree(exported.path, tmp)
    else:
        shutil.copyfile(exported.path, tmp)
    remove_path(dest)
    tmp.rename(dest)
    return dest


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
