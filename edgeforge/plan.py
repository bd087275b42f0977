"""The build plan: everything checked before training, frozen for the rest of the build.

Targets, their exporters and options, each target's effective gate, data, teacher, the untrained
student and the fingerprints of the user's code are resolved here once. Stages never change the
plan: each takes what it needs from it and hands its output to the next through the engine.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .carrier import Carrier
from .config import CalibrationConfig, LoadedConfig
from .data import DataBundle, Split, calibration_split, load_data
from .devices import Compute
from .distributed import Ranks, resolve_compute
from .errors import ConfigError, EdgeforgeError
from .exporters import exporter_class
from .factories import add_search_paths
from .fingerprint import code_digest
from .gate_spec import DEFAULT_GATE, GateSpec
from .metrics import Metric, resolve_metric
from .models.loading import build_student, check_outputs, embedding_from_teacher, load_teacher, token_defaults
from .targets import TargetProfile, resolve
from .training import TrainContext

if TYPE_CHECKING:
    from .teacher_cache import TeacherStore
from .validate import sha256_file

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    lc: LoadedConfig
    targets: tuple[TargetProfile, ...]
    gates: dict[str, GateSpec]  # target name -> effective gate
    data: DataBundle
    teacher: nn.Module
    student_init: nn.Module  # the untrained student; stages work on copies
    teacher_digest: str
    teacher_bytes: int
    student_digest: str  # its code, config and initial weights
    data_code: str | None  # the data factory's code, if any
    calibration: CalibrationConfig
    compute: Compute = field(default_factory=Compute)  # train.device resolved, train.precision
    ranks: Ranks = field(default_factory=Ranks)  # the torchrun job, once the pipeline has joined it

    def new_student(self) -> nn.Module:
        return copy.deepcopy(self.student_init)

    def make_carrier(self, student: nn.Module, quantized: torch.fx.GraphModule | None) -> Carrier:
        d = self.data
        return Carrier(student, quantized, d.input_shape, d.num_classes, d.class_names,
                       self.calibration_split.x, name=self.lc.config.name, inputs=d.inputs)

    @cached_property
    def calibration_split(self) -> Split:
        """Picked once per build: the QAT stage and every target's carrier share it."""
        return calibration_split(self.data, self.calibration)

    @cached_property
    def metric(self) -> Metric:
        """The task metric (``metric:``) every reference and artifact is judged by."""
        return resolve_metric(self.lc.config.metric, self.data.num_classes)

    def metric_identity(self) -> dict[str, Any]:
        return {"metric": self.metric.name, "metric_code": self.metric.code}

    def data_identity(self) -> dict[str, Any]:
        aug = self.lc.config.data.augment
        return {"data": self.data.digest(), "data_code": self.data_code,
                "augment": aug.model_dump(mode="json") if aug else None}

    def train_context(self, resume_dir: Path | None, log: Callable[[str], None] | None) -> TrainContext:
        from .resume import EpochCheckpoint

        d = self.lc.config.data
        return TrainContext(self.compute, self.ranks, EpochCheckpoint(resume_dir, self.ranks), log,
                            workers=d.workers, augment=d.augment, teacher_store=self.teacher_store(log),
                            inputs_vary=d.varies)

    def teacher_store(self, log: Callable[[str], None] | None) -> TeacherStore:
        """Where teacher logits are cached across stages and builds, keyed by what decides them."""
        from .teacher_cache import TeacherStore, default_root

        d = self.lc.config.data
        root = self.lc.resolve(d.teacher_cache) if d.teacher_cache else default_root()
        transform = d.model_dump(mode="json", include={"kind", "x_key", "image_size", "grayscale", "mean", "std"})
        identity = {"teacher": self.teacher_digest, "data_code": self.data_code, "transform": transform,
                    "device": self.compute.device.type, "precision": self.compute.precision}
        return TeacherStore(root, identity, log)

    def training_identity(self, *, precision: bool) -> dict[str, Any]:
        """What of the hardware decides a training stage's result: the device kind, autocast, the rank count
        (a GPU's or a 2-rank run's weights differ from a CPU's; a cached CPU result is not reused for them)."""
        out: dict[str, Any] = {"device": self.compute.device.type, "world": self.ranks.world}
        return {**out, "precision": self.compute.precision} if precision else out


def _state_digest(model: nn.Module) -> tuple[str, int]:
    """(sha256, bytes) of a model's tensors by content: torch.save output carries a random id."""
    h = hashlib.sha256()
    size = 0
    for name, v in sorted(model.state_dict().items()):
        t = v.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update(raw)
        size += len(raw)
    return h.hexdigest(), size


def _teacher_identity(lc: LoadedConfig, teacher: nn.Module) -> tuple[str, int]:
    t = lc.config.teacher
    source = t.checkpoint or t.torchscript or t.program
    code = code_digest(t.factory) or ""
    if source:
        path = lc.resolve(source)
        digest, size = sha256_file(path), path.stat().st_size
    else:
        digest, size = _state_digest(teacher)
    return (hashlib.sha256(f"{digest}:{code}".encode()).hexdigest() if code else digest), size


def _student_identity(lc: LoadedConfig, student: nn.Module) -> str:
    s = lc.config.student
    weights, _ = _state_digest(student)
    blob = f"{s.model_dump_json()}:{code_digest(s.factory) or ''}:{weights}"
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_targets(lc: LoadedConfig, names: list[str] | None) -> tuple[tuple[TargetProfile, ...], dict[str, GateSpec]]:
    cfg = lc.config
    targets = tuple(resolve(names or cfg.targets, [lc.resolve(d) for d in cfg.target_dirs]))
    build_gate = cfg.gate.over(DEFAULT_GATE)
    for t in targets:
        try:
            exporter_class(t.format)().check_target(t)
            _check_runner(t)
        except EdgeforgeError as exc:
            if exc.target is None:
                raise EdgeforgeError(str(exc), target=t.name) from None
            raise
    return targets, {t.name: t.gate.over(build_gate) for t in targets}


def _check_runner(t: TargetProfile) -> None:
    """A profile that measures latency on a device needs a runtime with a runner for that transport."""
    where = t.latency.measured_on
    if where == "host":
        return
    from .runtimes import get_runtime

    rt = get_runtime(t.format, t.runtime.engine)
    if (where == "ssh" and not rt.ssh_bench) or (where == "adb" and not rt.adb_bench):
        raise ConfigError(f"latency.measured_on: {where} has no runner for {t.format} artifacts ({rt.name})",
                          target=t.name, fix="measure on the host or pick a format whose runtime benchmarks there")


def plan_build(lc: LoadedConfig, target_names: list[str] | None = None) -> Plan:
    """Everything that can be checked before training: targets, exporters, data, models, shapes."""
    cfg = lc.config
    add_search_paths([lc.root, Path.cwd()])
    compute = resolve_compute(cfg.train.device, cfg.train.precision)  # a missing GPU fails before anything loads
    targets, gates = resolve_targets(lc, target_names)
    data = load_data(lc)
    resolve_metric(cfg.metric, data.num_classes)  # top5 of 4 classes fails here, not after training
    calibration = lc.calibration()  # parse errors surface now, not after training
    teacher = load_teacher(lc)
    example = data.train.head(2)
    check_outputs(teacher, example, data.num_classes, "teacher")
    torch.manual_seed(cfg.distill.seed)  # the student's initial weights are part of the build's identity
    student = build_student(lc, data.input_shape[0], data.num_classes, token_defaults(data.inputs))
    if cfg.student.embedding_from_teacher:
        embedding_from_teacher(student, teacher, cfg.student.embedding_from_teacher)
    student.eval()
    check_outputs(student, example, data.num_classes, "student")
    if cfg.qat.float_modules:  # a misspelt layer would only be found after distillation
        from .quant.fallback import check_modules

        check_modules(student, cfg.qat.float_modules)
    digest, nbytes = _teacher_identity(lc, teacher)
    return Plan(lc, targets, gates, data, teacher, student, digest, nbytes, _student_identity(lc, student),
                code_digest(cfg.data.factory), calibration, compute)


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("edgeforge", "torch", "torchao", "numpy", *extra):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def all_target_names(lc: LoadedConfig) -> list[str]:
    from .targets import available

    return list(available([lc.resolve(d) for d in lc.config.target_dirs]))
