"""The cached training stages: preflight, distillation and QAT, each in a folder named by its inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import StageCache, save_torch, stage_key
from .data import calibration_split
from .errors import EdgeforgeError
from .plan import Plan, versions
from .training import NonFiniteLoss, progress_enabled

Log = Callable[[str], None]


def _when(record: dict[str, Any], cached: bool) -> str:
    return " (cached)" if cached else f" in {record['seconds']:.1f} s"


def _keep_last_good(exc: NonFiniteLoss, path: Path) -> EdgeforgeError:
    """Save the best state seen before training diverged, and say where it is."""
    if not exc.last_good:
        return EdgeforgeError(f"{exc} (it diverged in the first epoch: no checkpoint to keep)")
    save_torch(exc.last_good, path)
    return EdgeforgeError(f"{exc} (the last good checkpoint is kept in {path})")


def run_preflight_stage(plan: Plan, cache: StageCache, log: Log) -> dict[str, Any]:
    from .preflight import PreflightFailed, run_preflight

    cfg = plan.lc.config
    key = stage_key("preflight", student=cfg.student.model_dump(mode="json"), shape=list(plan.data.input_shape),
                    classes=plan.data.num_classes, targets=[t.model_dump(mode="json") for t in plan.targets],
                    versions=versions())
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


def run_distill_stage(plan: Plan, cache: StageCache, log: Log) -> tuple[nn.Module, dict[str, Any]]:
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


def run_qat_stage(plan: Plan, distill_key: str, cache: StageCache, log: Log) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    from .quant.qat import load_carrier, quantization_aware_training, save_carrier

    cfg = plan.lc.config
    cal = plan.calibration
    key = stage_key("qat", config=cfg.qat.model_dump(mode="json"), distill=distill_key,
                    calibration=cal.model_dump(mode="json"), data=plan.data.digest())

    def produce(folder: Path) -> dict[str, Any]:
        kind = "post-training quantization (qat.epochs: 0)" if cfg.qat.epochs == 0 else f"{cfg.qat.epochs} epochs int8 QAT"
        log(f"[qat] {kind} (w: per-channel symmetric, a: per-tensor affine"
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


