"""Preflight: export the untrained student (float and int8) for every target before any training.

A target that cannot take the model (an op its converter lacks, a dynamic batch where it needs a
static one, a layout it cannot feed, float ops in a full-int8 file, a runtime that cannot load it)
fails here in seconds, with the target, the op or shape, and what to change.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .carrier import Carrier
from .data.batch import Inputs, call, count, to_numpy
from .errors import EdgeforgeError, RuntimeUnavailable, unexpected
from .exporters import get_exporter
from .runtimes import get_runtime
from .targets import TargetProfile

if TYPE_CHECKING:
    from .plan import Plan

MAX_LINE = 400  # a preflight line per target; a converter's message can run to 14,000 characters


class PreflightFailed(EdgeforgeError):
    def __init__(self, problems: list[str]) -> None:
        # one line per failing target (a matrix of 20 targets must stay readable)
        lines = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  - {p}" for p in problems)
        super().__init__(f"preflight failed for {len(problems)} target(s):{lines}")
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


def _cannot_convert(target: TargetProfile, exc: BaseException) -> str:
    """One line: the exporter's error names the op and the fix itself; anything else says "cannot convert"."""
    prefix = f"target {target.name}: "
    if isinstance(exc, EdgeforgeError):
        text = str(exc)
        return text if text.startswith(prefix) else prefix + text
    return f"{prefix}cannot convert: {unexpected(exc).removeprefix(prefix)}"


def clip_line(text: str, limit: int = MAX_LINE) -> str:
    """One line of at most ``limit`` characters; the end (the fix) is kept, the middle is cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head, sep, tail = text.rpartition("; ")
    if sep and len(tail) < limit // 2:
        return f"{head[: limit - len(tail) - 8].rstrip()} [...]; {tail}"
    return text[: limit - 6].rstrip() + " [...]"


def untrained_carrier(plan: Plan) -> Carrier:
    """The untrained student and a quickly calibrated int8 form of it (same quantizer as QAT)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .quant.qat import export_for_training
    from .quant.quantizer import Int8Quantizer, Int8Scheme

    student = plan.new_student().eval()
    head = plan.data.train.head(32)
    gm = export_for_training(student, head)
    prepared = prepare_pt2e(gm, Int8Quantizer(Int8Scheme(learn_activation_ranges=False)))
    with torch.no_grad():
        call(prepared, head)
    converted = convert_pt2e(prepared)
    return Carrier(student, converted, plan.data.input_shape, plan.data.num_classes, plan.data.class_names,
                   head, name=plan.lc.config.name, inputs=plan.data.inputs)


def check_target(carrier: Carrier, target: TargetProfile, folder: Path, sample: Inputs) -> TargetCheck:
    """Export, apply the format's own artifact rules, and run the file where this host can.

    "Cannot convert" fails the target; "cannot validate on this host" (no runtime, an op without a
    reference kernel) is a warning that the artifact will be unvalidated.
    """
    t0 = time.perf_counter()
    warnings: list[str] = []
    exporter = get_exporter(target.format)
    path = folder / f"{target.name}{exporter.suffix}"

    def done(ok: bool, message: str) -> TargetCheck:
        return TargetCheck(target.name, ok, clip_line(message), time.perf_counter() - t0,
                           [clip_line(w) for w in warnings])

    try:
        art = exporter.export(carrier, target, path)
    except Exception as exc:
        return done(False, _cannot_convert(target, exc))
    for check in exporter.artifact_checks(art.info, target):
        if not check.passed:
            return done(False, f"target {target.name}: {check.message}")
        if check.value not in (0, None):
            warnings.append(check.message)
    runtime = get_runtime(target.format, target.runtime.engine)
    try:
        session = runtime.open(path, target)
        out = session.run_all(to_numpy(sample))
    except RuntimeUnavailable as exc:
        warnings.append(f"will be unvalidated on this host: {exc}")
        return done(True, "ok")
    except Exception as exc:
        return done(False, f"target {target.name}: {runtime.name} cannot run the artifact: {unexpected(exc)}")
    if out.shape != (count(sample), carrier.num_classes):
        return done(False, f"target {target.name}: the artifact returns shape {out.shape}, "
                           f"expected ({count(sample)}, {carrier.num_classes})")
    return done(True, "ok")


def run_preflight(plan: Plan, log: Any = None) -> list[TargetCheck]:
    carrier = untrained_carrier(plan)
    sample = plan.data.val.head(3)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeforge-preflight-") as d:
        for target in plan.targets:
            r = check_target(carrier, target, Path(d), sample)
            if log:
                log(f"[preflight] {target.name}: {'ok' if r.ok else 'FAIL'} ({r.seconds:.1f} s)"
                    + (f" - {'; '.join(r.warnings)}" if r.warnings else ""))
            results.append(r)
    return results
