"""Validation written once over runtime sessions: accuracy, retention, drift, parity, latency, size."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .records import Latency, Metrics
from .runtimes.base import Session


@dataclass
class Accuracy:
    top1: float
    per_class: list[float | None]  # None for a class absent from the split

    @classmethod
    def of(cls, logits: np.ndarray, y: np.ndarray, num_classes: int) -> Accuracy:
        pred = logits.argmax(1)
        per = [float((pred[y == c] == c).mean()) if (y == c).any() else None for c in range(num_classes)]
        return cls(float((pred == y).mean()), per)


def measure_latency(session: Session, sample: np.ndarray, *, warmup: int, runs: int, threads: int,
                    measured_on: str) -> Latency:
    """Batch-1 latency after warm-up (the first runs pay for allocation and kernel selection)."""
    x = np.ascontiguousarray(sample[:1], dtype=np.float32)
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
    *, logits: np.ndarray, labels: np.ndarray, num_classes: int, teacher_top1: float,
    reference_name: str, reference_logits: np.ndarray, qat_sim_top1: float | None, float_top1: float,
    size_bytes: int, teacher_bytes: int,
) -> Metrics:
    acc = Accuracy.of(logits, labels, num_classes)
    ref_top1 = float((reference_logits.argmax(1) == labels).mean())
    diff = compare(logits, reference_logits)
    return Metrics(
        metric="top1", top1=acc.top1, per_class_top1=acc.per_class,
        retention=acc.top1 / teacher_top1 if teacher_top1 > 0 else None,
        reference=reference_name, reference_top1=ref_top1, drift_points=(acc.top1 - ref_top1) * 100.0,
        vs_float_student_points=(acc.top1 - float_top1) * 100.0, size_bytes=size_bytes,
        compression_vs_teacher=teacher_bytes / size_bytes,
        drift_vs_qat_points=(acc.top1 - qat_sim_top1) * 100.0 if qat_sim_top1 is not None else None,
        agreement=diff["agreement"], max_abs_diff=diff["max_abs_diff"], mean_abs_diff=diff["mean_abs_diff"],
    )
