"""Typed records of a build: what each stage and target produced, written to the manifest.

Plain dataclasses, so they cost nothing to import; ``manifest_json_schema()`` derives the JSON
Schema that ships with the package (``edgeforge schema manifest``) from the same classes the
manifest is written from, so the two cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

SCHEMA_VERSION = "edgeforge.manifest/2"

TargetStatus = Literal["validated", "unvalidated", "failed"]


class Record:
    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class Latency(Record):
    """Batch latency, on the host or on a device (``measured_on``: host, ssh:user@host, adb:SERIAL).

    Percentiles a device tool does not print are None; ``extra`` holds a runner's own figures
    (e.g. adb's p5/p95).
    """

    batch: int
    threads: int
    warmup: int
    runs: int
    load_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    measured_on: str
    samples_ms: list[float] = field(default_factory=list)
    runtime: str = ""
    runtime_version: str = ""
    device: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latency:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Check(Record):
    """One gate check: its value, its limit and the verdict. ``skipped``: not measurable here."""

    name: str
    passed: bool
    value: float | str | None
    limit: float | str | None
    message: str
    skipped: bool = False


@dataclass
class FirstDivergent:
    """The layer report's verdict (``edgeforge debug``), run in the build for an int8 target over its drift,
    agreement or logit-LSB gate.

    ``node`` is the carrier's first quantized node whose artifact tensor diverges (None when none does
    or the report failed); ``metric`` says by how much, "no node diverges", or "layer report failed: ...".
    """

    node: str | None
    module: str | None
    op: str | None
    metric: str


@dataclass
class Metrics:
    """An artifact judged in its own runtime on the test split, against the teacher and its reference."""

    metric: str  # the task metric (metric: in the config) that value, retention and the drifts are of
    top1: float  # always top-1, whatever the metric
    per_class_top1: list[float | None]  # per-class recall
    retention: float | None  # metric / the teacher's metric
    reference: str
    reference_top1: float
    drift_points: float  # (metric - reference's metric) in points
    vs_float_student_points: float
    agreement: float  # share of top-1 predictions equal to the reference's
    max_abs_diff: float  # logits vs the reference's
    mean_abs_diff: float
    size_bytes: int
    compression_vs_teacher: float  # teacher bytes / artifact bytes
    drift_vs_qat_points: float | None = None
    latency: Latency | None = None
    latency_note: str | None = None
    host_latency: Latency | None = None
    first_divergent: FirstDivergent | None = None  # only for an int8 target over its drift/agreement/logit-LSB gate
    # |logit - reference logit| in steps of the carrier's int8 output: per input its largest over the classes,
    # then the 99th percentile and the max over the test split; None (with the note) for a float output
    logit_lsb_p99: float | None = None
    logit_lsb_max: float | None = None
    output_step: float | None = None  # the carrier's output scale (one LSB of the logits)
    logit_lsb_note: str | None = None  # why logit_lsb is not applicable ("not applicable: ...")
    value: float | None = None  # the metric's value; manifests before metric: have only top1 (then the metric)
    reference_value: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # every metric that applies, by name


@dataclass
class Artifact:
    path: str
    sha256: str
    size_bytes: int
    digest_kind: str  # "file" or "folder" (sorted relative paths + contents)
    info: dict[str, Any] = field(default_factory=dict)  # what the exporter says: ops, I/O, float ops, versions


@dataclass
class StageRun:
    """One stage as the engine ran it: its key, whether it came from the cache, its time, its outcome."""

    name: str
    key: str | None
    cached: bool
    seconds: float
    status: Literal["ok", "failed", "skipped"] = "ok"
    error: dict[str, Any] | None = None


@dataclass
class TargetResult:
    name: str
    format: str
    precision: str
    description: str
    device: dict[str, Any]
    threads: int
    gate: dict[str, Any]  # the effective gate of this target (build gate, then the profile's gate)
    status: TargetStatus
    reason: str | None = None
    runtime: str | None = None
    executor: str | None = None
    export_seconds: float | None = None
    artifact: Artifact | None = None
    runtime_graph: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics | None = None
    checks: list[Check] = field(default_factory=list)
    stages: list[StageRun] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "validated" and all(c.passed for c in self.checks)


@dataclass
class ModelRecord:
    top1: float
    per_class_top1: list[float | None]
    parameters: int | None = None
    bytes: int | None = None
    path: str | None = None
    sha256: str | None = None
    content_sha256: str | None = None
    metric: str = "top1"
    value: float | None = None  # the metric's value (None in manifests before metric:, where it is top1)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class FallbackLayer:
    """A conv/linear layer reverted to float alone in an int8 simulation of the float student (validation split)."""

    module: str
    drop_points: float  # the metric's drop below the float student with only this layer float
    error: float  # mean squared logit error vs the float student on the worst samples (the ranking score)


@dataclass
class FallbackStep:
    """One revert tried by the search, on top of the layers kept before it; stepped back when it did not help."""

    module: str
    drop_points: float
    kept: bool


@dataclass
class Fallback(Record):
    """qat.fallback: the layers kept float so that QAT stays within ``max_drop_points`` of the float student."""

    metric: str
    max_drop_points: float
    max_float_layers: int
    float_value: float  # the float student's metric on the validation split
    int8_value: float  # the first QAT run's (every layer int8)
    drop_points: float
    needed: bool
    ranking: list[FallbackLayer] = field(default_factory=list)  # most sensitive first
    steps: list[FallbackStep] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the layers every int8 artifact holds float
    final_value: float | None = None  # after the second QAT run with ``kept`` float
    final_drop_points: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fallback:
        return cls(**{**d, "ranking": [FallbackLayer(**r) for r in d.get("ranking", [])],
                      "steps": [FallbackStep(**s) for s in d.get("steps", [])]})


@dataclass
class Training(Record):
    """Where the training stages ran: ``precision`` is the autocast of teacher inference and distillation;
    QAT always trains in fp32 and its carrier is converted on the CPU. ``processes``: torchrun ranks."""

    device: str  # as torch names it: cpu, cuda:0, mps
    device_name: str  # the GPU's name, or the device kind
    precision: Literal["fp32", "bf16", "fp16"]
    qat_precision: Literal["fp32"] = "fp32"
    processes: int = 1
    backend: str | None = None  # gloo or nccl under torchrun


@dataclass
class Comparison:
    """One regression check of a target against a baseline build."""

    target: str
    check: str
    passed: bool
    new: float | str | None
    old: float | str | None
    limit: float | str | None
    message: str
    skipped: bool = False


@dataclass
class GateOutcome:
    passed: bool
    errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Int8Slowdown:
    """An int8 artifact slower on this host than the fastest fp32 artifact of its format (same threads).

    Host p50 latencies of one build; ``message`` is the warning the reports print.
    """

    format: str
    int8_target: str
    fp32_target: str
    int8_ms: float
    fp32_ms: float
    ratio: float  # int8 / fp32, > 1
    message: str


@dataclass
class Manifest:
    schema: str
    name: str
    created: str
    host: dict[str, Any]
    versions: dict[str, str]
    config: dict[str, Any]
    data: dict[str, Any]
    seed: dict[str, int]
    stage_seconds: dict[str, float]
    stages: dict[str, Any]
    models: dict[str, ModelRecord]
    targets: list[TargetResult]
    gate: GateOutcome
    exit_code: int
    regression: dict[str, Any] | None = None
    fallback: Fallback | None = None  # qat.fallback's search, when configured
    training: Training | None = None
    int8_slower: list[Int8Slowdown] = field(default_factory=list)  # int8 slower than fp32 on this host

    def to_json_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null: strict JSON parsers reject bare NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def manifest_json_schema() -> dict[str, Any]:
    from pydantic import TypeAdapter

    schema = TypeAdapter(Manifest).json_schema()
    schema["$id"] = f"https://edgeforge.dev/schema/{SCHEMA_VERSION}.json"
    schema["title"] = "edgeforge build manifest"
    return schema
