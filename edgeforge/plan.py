"""The build plan: everything checked before training (targets, exporters, data, models, shapes)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import CalibrationConfig, LoadedConfig
from .data import DataBundle, load_data
from .errors import EdgeforgeError
from .exporters import get_exporter
from .factories import add_search_paths
from .models.loading import build_student, check_outputs, load_teacher
from .targets import TargetProfile, resolve
from .validate import sha256_file

Log = Callable[[str], None]


@dataclass
class Plan:
    lc: LoadedConfig
    targets: list[TargetProfile]
    data: DataBundle
    teacher: nn.Module
    student: nn.Module
    teacher_digest: str
    teacher_bytes: int
    calibration: CalibrationConfig  # parsed once, before training


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
        exporter.check_precision(t)
    data = load_data(lc)
    calibration = lc.calibration()  # parse errors surface now, not after training
    teacher = load_teacher(lc)
    example = data.train.x[:2]
    check_outputs(teacher, example, data.num_classes, "teacher")
    torch.manual_seed(cfg.distill.seed)  # the student's initial weights are part of the build's identity
    student = build_student(lc, data.input_shape[0], data.num_classes)
    student.eval()
    check_outputs(student, example, data.num_classes, "student")
    digest, nbytes = _teacher_identity(lc, teacher)
    return Plan(lc, targets, data, teacher, student, digest, nbytes, calibration)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("edgeforge", "torch", "torchao", "numpy", "onnx", "onnxscript", "onnxruntime", "coremltools",
                "litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def all_target_names(lc: LoadedConfig) -> list[str]:
    from .targets import available

    return list(available([lc.resolve(d) for d in lc.config.target_dirs]))


