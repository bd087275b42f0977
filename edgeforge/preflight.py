"""Preflight: export the untrained student (float and int8) for every target before any training.

A target that cannot take the model (an op its converter lacks, a dynamic batch where it needs a
static one, a layout it cannot feed, float ops in a full-int8 file, a runtime that cannot load it)
fails here in seconds, with the target, the op or shape, and what to change.
"""

from __future__ import annotations

import copy
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .carrier import Carrier
from .errors import EdgeforgeError, RuntimeUnavailable
from .exporters import get_exporter
from .runtimes import get_runtime
from .targets import TargetProfile

if TYPE_CHECKING:
    from .plan import Plan


class PreflightFailed(EdgeforgeError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"preflight failed for {len(problems)} target(s): " + "; ".join(problems))
        self.problems = problems


@dataclass
class TargetCheck:
    target: str
    ok: bool
    message: str
    seconds: float
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return vars(self)


_OP = re.compile(r"\b(aten\.[\w.]+|[a-z_]+(?= has no reference kernel))")


def _advice(target: TargetProfile, message: str) -> str:
    op = _OP.search(message)
    if op:
        return (f"target {target.name}: the student uses op {op.group(1)}, which the {target.format} path cannot take "
                f"({message.removeprefix(f'target {target.name}: ')}); replace that op in the student or drop the target")
    return message if message.startswith(f"target {target.name}") else f"target {target.name}: {message}"


def untrained_carrier(plan: Plan) -> Carrier:
    """The untrained student and a quickly calibrated int8 form of it (same quantizer as QAT)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .quant.qat import export_for_training
    from .quant.quantizer import Int8Quantizer, Int8Scheme

    student = copy.deepcopy(plan.student).eval()
    gm = export_for_training(student, plan.data.train.x)
    prepared = prepare_pt2e(gm, Int8Quantizer(Int8Scheme(learn_activation_ranges=False)))
    with torch.no_grad():
        prepared(plan.data.train.x[:32])
    converted = convert_pt2e(prepared)
    return Carrier(student, converted, plan.data.input_shape, plan.data.num_classes, plan.data.class_names,
                   plan.data.train.x[:32], name=plan.lc.config.name)


def check_target(carrier: Carrier, target: TargetProfile, folder: Path, sample: torch.Tensor) -> TargetCheck:
    t0 = time.perf_counter()
    warnings: list[str] = []
    exporter = get_exporter(target.format)
    path = folder / f"{target.name}{exporter.suffix}"
    try:
        art = exporter.export(carrier, target, path)
    except Exception as exc:
        msg = str(exc) if isinstance(exc, EdgeforgeError) else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        return TargetCheck(target.name, False, _advice(target, msg), time.perf_counter() - t0, warnings)
    float_ops = art.info.get("float_ops") or []
    if target.format == "tflite" and target.precision == "int8" and float_ops:
        names = ", ".join(sorted({str(o.get("op", o)) if isinstance(o, dict) else str(o) for o in float_ops}))
        msg = (f"target {target.name}: ops {names} stay float in the full-int8 file (an NPU or DSP would hand them "
               "back to the CPU); replace them in the student or set tflite.allow_float_ops: true")
        if not target.tflite.allow_float_ops:
            return TargetCheck(target.name, False, msg, time.perf_counter() - t0, warnings)
        warnings.append(msg)
    runtime = get_runtime(target.format)
    reason = runtime.unavailable_reason()
    if reason:
        warnings.append(f"not run on this host: {reason}")
    else:
        try:
            session = runtime.open(path, target)
            out = session.run_all(sample.numpy())
            if out.shape != (len(sample), carrier.num_classes):
                return TargetCheck(target.name, False, f"target {target.name}: the artifact returns shape {out.shape}, "
                                   f"expected ({len(sample)}, {carrier.num_classes})", time.perf_counter() - t0, warnings)
        except RuntimeUnavailable as exc:
            return TargetCheck(target.name, False, _advice(target, str(exc)), time.perf_counter() - t0, warnings)
        except Exception as exc:
            msg = f"{runtime.name} cannot run the artifact: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            return TargetCheck(target.name, False, f"target {target.name}: {msg}", time.perf_counter() - t0, warnings)
    return TargetCheck(target.name, True, "ok", time.perf_counter() - t0, warnings)


def run_preflight(plan: Plan, log: Any = None) -> list[TargetCheck]:
    carrier = untrained_carrier(plan)
    sample = plan.data.val.x[:3]
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeforge-preflight-") as d:
        for target in plan.targets:
            r = check_target(carrier, target, Path(d), sample)
            if log:
                log(f"[preflight] {target.name}: {'ok' if r.ok else 'FAIL'} ({r.seconds:.1f} s)"
                    + (f" - {'; '.join(r.warnings)}" if r.warnings else ""))
            results.append(r)
    return results
