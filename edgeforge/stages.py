"""The model stages of a build: preflight, distillation, QAT and the reference evaluation.

Each declares what decides its output and how to produce and reload it; the engine
(``engine.py``) owns keys, caching, timing and records. The per-target stages are in
``target_stages.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .cache import save_torch
from .config import QatConfig
from .engine import Log, Stage
from .errors import EdgeforgeError
from .plan import Plan, versions
from .records import Fallback
from .training import NonFiniteLoss, progress_enabled

if TYPE_CHECKING:
    from .distill import DistillOutput
    from .quant.qat import QatOutput


def _keep_last_good(exc: NonFiniteLoss, path: Path) -> EdgeforgeError:
    """Save the best state seen before training diverged, and say where it is."""
    if not exc.last_good:
        return EdgeforgeError(f"{exc} (it diverged in the first epoch: no checkpoint to keep)")
    save_torch(exc.last_good, path)
    return EdgeforgeError(f"{exc} (the last good checkpoint is kept in {path})")


def _best_epoch(record: dict[str, Any]) -> str:
    return f"best val top-1 {record['best_val_top1']:.4f} at epoch {record['best_epoch']}"


def _training_record(r: Any) -> dict[str, Any]:
    return {"best_epoch": r.best_epoch, "best_val_top1": r.best_val_top1, "seconds": r.seconds,
            "samples_per_second": r.samples_per_second, "resumed_at_epoch": r.resumed_at,
            "history": [vars(h) for h in r.history]}


class PreflightStage(Stage[dict[str, Any]]):
    """Export the untrained student for every target before any training (see preflight.py)."""

    kind = "preflight"

    def __init__(self, plan: Plan, log: Callable[[str], None]) -> None:
        super().__init__()
        self.plan = plan
        self.log = log

    def key_inputs(self) -> dict[str, Any]:
        from .exporters import exporter_class

        p = self.plan
        packages = tuple(sorted({pkg for t in p.targets for pkg in exporter_class(t.format).packages}))
        return {"student": p.student_digest, "shape": list(p.data.input_shape), "classes": p.data.num_classes,
                "targets": [t.model_dump(mode="json") for t in p.targets], "versions": versions(packages)}

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        from .preflight import PreflightFailed, run_preflight

        results = run_preflight(self.plan, self.log)
        failed = [r for r in results if not r.ok]
        if failed:
            raise PreflightFailed([r.message for r in failed])
        return {"ran": True, "targets": [r.as_dict() for r in results]}

    def describe(self, record: dict[str, Any]) -> str:
        warns = [w for r in record["targets"] for w in r["warnings"]]
        return f"{len(record['targets'])} target(s) ok" + (f"; {len(warns)} warning(s)" if warns else "")


class DistillStage(Stage[nn.Module]):
    kind = "distill"

    def __init__(self, plan: Plan, log: Log | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.log = log

    def key_inputs(self) -> dict[str, Any]:
        cfg = self.plan.lc.config
        return {"config": cfg.distill.model_dump(mode="json"), "student": self.plan.student_digest,
                "teacher": self.plan.teacher_digest, "augmented": cfg.data.augmented, **self.plan.data_identity(),
                "train": self.plan.training_identity(precision=True)}

    def train(self) -> DistillOutput:
        """Distil (on every rank of a torchrun job); resumes from this stage's epoch checkpoint if there is one."""
        from .distill import distill

        p, cfg = self.plan, self.plan.lc.config
        try:
            return distill(p.teacher, p.new_student(), p.data, cfg.distill, augmented=cfg.data.varies,
                           show_progress=progress_enabled(cfg.progress), ctx=p.train_context(self.resume_dir, self.log))
        except NonFiniteLoss as exc:
            if not p.ranks.leader:  # rank 0 alone writes
                raise
            raise _keep_last_good(exc, p.lc.output_dir / "student_float.last_good.pt") from None

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        assert folder is not None
        out = self.train()
        save_torch(out.student.state_dict(), folder / "student.pt")
        return _training_record(out.result)

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> nn.Module:
        assert folder is not None
        student = self.plan.new_student()
        student.load_state_dict(torch.load(folder / "student.pt", weights_only=True))
        return student.eval()

    def describe(self, record: dict[str, Any]) -> str:
        return _best_epoch(record)

    def announce(self) -> str:
        d = self.plan.lc.config.distill
        return f"{d.epochs} epochs, T={d.temperature}, alpha={d.alpha}"


class QatStage(Stage[torch.fx.GraphModule]):
    """int8 QAT of the distilled student; its converted graph is the one carrier of every int8 artifact."""

    kind = "qat"

    def __init__(self, plan: Plan, log: Log | None = None) -> None:
        super().__init__(after=("distill",))
        self.plan = plan
        self.log = log

    def key_inputs(self) -> dict[str, Any]:
        cfg = self.plan.lc.config
        return {"config": cfg.qat.model_dump(mode="json"), "calibration": self.plan.calibration.model_dump(mode="json"),
                "teacher": self.plan.teacher_digest, **self.plan.data_identity(),
                "train": self.plan.training_identity(precision=False)}

    def train(self, student: nn.Module) -> QatOutput:
        """QAT of ``student`` (on every rank of a torchrun job; every rank ends with the same carrier)."""
        from .quant.qat import quantization_aware_training

        p, cfg = self.plan, self.plan.lc.config
        try:
            return quantization_aware_training(
                student, p.teacher, p.data, p.calibration_split, cfg.qat, temperature=cfg.distill.temperature,
                alpha=cfg.distill.alpha, show_progress=progress_enabled(cfg.progress),
                ctx=p.train_context(self.resume_dir, self.log))
        except NonFiniteLoss as exc:
            if not p.ranks.leader:  # rank 0 alone writes
                raise
            raise _keep_last_good(exc, p.lc.output_dir / "student_qat.last_good.pt") from None

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        from .quant.qat import save_carrier

        assert folder is not None
        p, cfg = self.plan, self.plan.lc.config
        cal, calib = p.calibration, p.calibration_split
        out = self.train(inputs["distill"])
        out, fallback = self._fallback(out, inputs["distill"])
        save_carrier(out.converted, p.data.train.head(2), str(folder / "student_qat.pt2"))
        return {**_training_record(out.result), "convert_max_abs_diff": out.convert_max_diff,
                "quantize_ops": out.quantized_ops, "post_training_only": cfg.qat.epochs == 0,
                "fallback": fallback.as_dict() if fallback else None,
                "calibration": {"name": cal.name, "samples": len(calib), "split": cal.split,
                                "selection": cal.selection, "seed": cal.seed}}

    def _fallback(self, out: Any, student: nn.Module) -> tuple[Any, Fallback | None]:
        """qat.fallback: QAT again with the layers the accuracy budget needs kept float (see quant/fallback.py)."""
        from .quant.fallback import float_fallback
        from .quant.qat import quantization_aware_training

        p, cfg = self.plan, self.plan.lc.config

        def rerun(qat: QatConfig) -> Any:
            try:
                return quantization_aware_training(
                    student, p.teacher, p.data, p.calibration_split, qat, temperature=cfg.distill.temperature,
                    alpha=cfg.distill.alpha, show_progress=progress_enabled(cfg.progress),
                    ctx=p.train_context(self.resume_dir / "fallback" if self.resume_dir else None, self.log))
            except NonFiniteLoss as exc:
                if not p.ranks.leader:
                    raise
                raise _keep_last_good(exc, p.lc.output_dir / "student_qat.last_good.pt") from None

        return float_fallback(out, student, p.data, p.calibration_split, cfg.qat, rerun, self.log or (lambda _m: None))

    def announce(self) -> str:
        q = self.plan.lc.config.qat
        kind = "post-training quantization (qat.epochs: 0)" if q.epochs == 0 else f"{q.epochs} epochs int8 QAT"
        return (f"{kind} (w: per-channel symmetric, a: per-tensor affine"
                f"{', learned ranges' if q.learn_ranges else ''})")

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> torch.fx.GraphModule:
        from .quant.qat import load_carrier

        assert folder is not None
        return load_carrier(str(folder / "student_qat.pt2"))

    def describe(self, record: dict[str, Any]) -> str:
        fb = record.get("fallback")
        if not fb or not fb["needed"]:
            return _best_epoch(record) + (f"; int8 {fb['drop_points']:.2f} pt below float (fallback not needed)"
                                          if fb else "")
        return (f"{_best_epoch(record)}; kept float: {', '.join(fb['kept'])} (drop {fb['drop_points']:.2f} -> "
                f"{fb['final_drop_points']:.2f} pt, budget {fb['max_drop_points']:g})")


@dataclass
class References:
    """The reference models' logits on the test split and their records, for every target's validation."""

    logits: dict[str, np.ndarray]
    top1: dict[str, float]
    per_class: dict[str, list[float | None]]
    value: dict[str, float]  # the task metric (metric:) of each role


class ReferenceStage(Stage[References]):
    kind = "reference"
    ROLES = ("teacher", "float_student", "qat_simulation")

    def __init__(self, plan: Plan, log: Log | None = None) -> None:
        super().__init__(after=("distill", "qat"))
        self.plan = plan
        self.log = log

    def key_inputs(self) -> dict[str, Any]:
        return {"teacher": self.plan.teacher_digest, "validation": self.plan.lc.config.validation.batch_size,
                **self.plan.data_identity(), **self.plan.metric_identity()}

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        from .validate import Scores

        assert folder is not None
        p = self.plan
        y = p.data.test.y.numpy()
        logits = {"teacher": self._teacher_logits(), "float_student": self._run(inputs["distill"]),
                  "qat_simulation": self._run(inputs["qat"])}
        np.savez(folder / "logits.npz", **logits)  # type: ignore[arg-type]
        s = {r: Scores.of(logits[r], y, p.data.num_classes, p.metric) for r in self.ROLES}
        return {"top1": {r: a.top1 for r, a in s.items()}, "per_class": {r: a.per_class for r, a in s.items()},
                "metric": p.metric.name, "value": {r: a.value for r, a in s.items()},
                "scores": {r: a.scores for r, a in s.items()}}

    def _run(self, model: Any) -> np.ndarray:
        """A model's logits on the test split, in fp32 on the CPU."""
        from .runtimes.torch_ref import TorchSession
        from .validate import run_split

        p = self.plan
        return run_split(TorchSession(model), p.data.test, p.lc.config.validation.batch_size, p.data.workers)

    def _teacher_logits(self) -> np.ndarray:
        """The teacher's test logits through the teacher-output cache (a slow teacher runs once per test split,
        not again for every student); in fp32 only: the cache of an autocast build holds bf16/fp16 logits."""
        from .training import TrainContext, teacher_logits

        p = self.plan
        if p.compute.precision != "fp32":
            return self._run(p.teacher)
        ctx = TrainContext(p.compute, log=self.log, workers=p.data.workers, teacher_store=p.teacher_store(self.log))
        return teacher_logits(p.teacher, p.data.test, ctx).numpy().astype(np.float32)

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> References:
        assert folder is not None
        with np.load(folder / "logits.npz", allow_pickle=False) as z:
            logits = {r: z[r] for r in self.ROLES}
        return References(logits, record["top1"], record["per_class"], record["value"])

    def describe(self, record: dict[str, Any]) -> str:
        from .metrics import label

        t = record["value"]
        return (f"test {label(record['metric'])}: teacher {t['teacher']:.4f}, float student {t['float_student']:.4f}, "
                f"QAT simulation {t['qat_simulation']:.4f}")
