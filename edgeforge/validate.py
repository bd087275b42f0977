"""Validation written once over runtime sessions: accuracy, retention, drift, parity, latency, size."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data.batch import to_numpy
from .inputs import as_arrays
from .metrics import Metric, per_class_recall, scores
from .records import Latency, Metrics
from .runtimes.base import Session

if TYPE_CHECKING:
    from .data import SplitBase
    from .inputs import Batch


@dataclass
class Scores:
    """A model's outputs judged on a split: top-1, per-class recall, the task metric, every metric that applies."""

    top1: float
    per_class: list[float | None]  # per-class recall; None for a class absent from the split
    value: float  # the task metric (metric: in the config)
    scores: dict[str, float]

    @classmethod
    def of(cls, logits: np.ndarray, y: np.ndarray, num_classes: int, metric: Metric) -> Scores:
        every = scores(logits, y, metric)
        return cls(every["top1"], per_class_recall(logits, y, num_classes), every[metric.name], every)


def run_split(session: Session, split: SplitBase, batch_size: int, workers: int = 0) -> np.ndarray:
    """The session's outputs over a whole split, read a batch at a time (streamed splits stay on disk)."""
    outs = [session.run_all(to_numpy(x), batch_size) for x, _ in split.batches(batch_size * 8, workers=workers)]
    return np.concatenate(outs).astype(np.float32)


def measure_latency(session: Session, sample: Batch, *, warmup: int, runs: int, threads: int,
                    measured_on: str) -> Latency:
    """Batch-1 latency after warm-up (the first runs pay for allocation and kernel selection)."""
    first = [np.ascontiguousarray(a[:1], dtype=np.float32 if a.dtype.kind == "f" else a.dtype) for a in as_arrays(sample)]
    x: Batch = first[0] if len(first) == 1 else tuple(first)
    for _ in range(warmup):
        session.run(x)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        session.run(x)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return Latency(1, threads, warmup, runs, session.load_seconds * 1e3, float(np.percentile(ms, 50)),
                   float(np.percentile(ms, 90)), float(np.percentile(ms, 99)), float(ms.mean()), measured_on,
                   [round(float(v), 5) for v in ms], runtime=session.executor)


def compare(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and output parity of an artifact against its reference model's logits."""
    return {
        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(logits - reference).max()),
        "mean_abs_diff": float(np.abs(logits - reference).mean()),
    }


def artifact_digest(path: Path) -> tuple[str, int]:
    """(sha256, bytes) of an artifact: a file, or a package folder such as .mlpackage.

    A folder hashes its relative paths and file contents in sorted order, so the digest is stable
    across machines; a plain file hashes as ``sha256sum`` would.
    """
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    h = hashlib.sha256()
    total = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(f)))
        total += f.stat().st_size
    return h.hexdigest(), total


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_metrics(
    *, logits: np.ndarray, labels: np.ndarray, num_classes: int, metric: Metric, reference_values: dict[str, float],
    reference_name: str, reference_logits: np.ndarray, size_bytes: int, teacher_bytes: int,
) -> Metrics:
    """An artifact's metrics; ``reference_values``: the task metric of teacher, float_student, qat_simulation."""
    s = Scores.of(logits, labels, num_classes, metric)
    teacher, ref = reference_values["teacher"], reference_values[reference_name]
    qat = reference_values.get("qat_simulation")
    diff = compare(logits, reference_logits)
    return Metrics(
        metric=metric.name, top1=s.top1, per_class_top1=s.per_class,
        retention=s.value / teacher if teacher > 0 else None,
        reference=reference_name, reference_top1=float((reference_logits.argmax(1) == labels).mean()),
        drift_points=(s.value - ref) * 100.0, vs_float_student_points=(s.value - reference_values["float_student"]) * 100.0,
        size_bytes=size_bytes, compression_vs_teacher=teacher_bytes / size_bytes,
        drift_vs_qat_points=(s.value - qat) * 100.0 if qat is not None else None,
        agreement=diff["agreement"], max_abs_diff=diff["max_abs_diff"], mean_abs_diff=diff["mean_abs_diff"],
        value=s.value, reference_value=ref, scores=s.scores,
    )


def set_logit_lsb(m: Metrics, logits: np.ndarray, reference: np.ndarray, step: float | None, note: str) -> None:
    """Record |logits - reference| in output LSBs (``step``: the carrier's output scale), or why not (``note``).

    Per input the largest difference over the classes; then the 99th percentile over inputs (what the gate
    bounds: the max of a split grows with its size, one input's rounding cascade should not fail a build,
    and a prediction it flips is agreement's to catch) and the max.
    """
    if step is None or step <= 0:
        m.logit_lsb_note = note
        return
    per_input = np.abs(logits.astype(np.float64) - reference).max(axis=1) / step
    m.output_step = step
    m.logit_lsb_p99 = float(np.percentile(per_input, 99, method="higher"))
    m.logit_lsb_max = float(per_input.max())
