"""Task metrics: the number that retention, drift, the gate and regression checks are computed on.

A metric takes ``(logits [N, C], labels [N])`` and returns one float, higher is better, normally a
fraction in [0, 1]: drift and regression limits are in points, 100 x a difference of it. The
built-ins register here; ``metric: package.module:function`` in a config names a user's function,
loaded like every user factory, so its source is part of the cache keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, EdgeforgeError
from .registry import Registry

MetricFn = Callable[[np.ndarray, np.ndarray], float]
DEFAULT_METRIC = "top1"
USER_FIX = "or name your own as package.module:function taking (logits, labels) and returning a float"


@dataclass(frozen=True)
class Metric:
    name: str  # as the config names it: top1, macro_f1, pkg.mod:fn
    label: str  # as reports print it
    fn: MetricFn
    min_classes: int = 1
    code: str | None = None  # sha256 of a user metric's sources (None for a built-in)

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> float:
        try:
            value = self.fn(logits, labels)
        except EdgeforgeError:
            raise
        except Exception as exc:
            raise EdgeforgeError(f"metric: {self.name}() failed: {type(exc).__name__}: {exc}", key="metric",
                                 fix="it must take (logits [N, C], labels [N]) numpy arrays") from None
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer) \
                or not math.isfinite(float(value)):
            raise EdgeforgeError(f"metric: {self.name}() returned {value!r}, not a finite number", key="metric",
                                 fix="return one float, higher is better")
        return float(value)


METRICS: Registry[Metric] = Registry("metric")


def _builtin(name: str, label: str, min_classes: int = 1) -> Callable[[MetricFn], MetricFn]:
    def deco(fn: MetricFn) -> MetricFn:
        METRICS.add(name, Metric(name, label, fn, min_classes))
        return fn

    return deco


@_builtin("top1", "top-1")
def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose highest logit is their label's."""
    return float((logits.argmax(1) == labels).mean())


@_builtin("top5", "top-5", min_classes=6)  # with 5 classes or fewer every label is in the top 5
def top5(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose label is among their five highest logits."""
    if logits.shape[1] <= 5:
        raise EdgeforgeError(f"top5 needs more than 5 classes; the model has {logits.shape[1]}", key="metric",
                             fix="use top1 or macro_f1")
    best = np.argpartition(-logits, 4, axis=1)[:, :5]
    return float((best == labels[:, None]).any(1).mean())


def per_class_recall(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of each class (its top-1 accuracy); None for a class absent from ``labels``."""
    pred = logits.argmax(1)
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else None for c in range(num_classes)]


def _present_recalls(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    return [r for r in per_class_recall(logits, labels, logits.shape[1]) if r is not None]


@_builtin("mean_class_recall", "mean class recall")
def mean_class_recall(logits: np.ndarray, labels: np.ndarray) -> float:
    """Per-class recall averaged over the classes in the split (balanced accuracy)."""
    return float(np.mean(_present_recalls(logits, labels)))


@_builtin("min_class_recall", "worst-class recall")
def min_class_recall(logits: np.ndarray, labels: np.ndarray) -> float:
    """The lowest per-class recall: a class the artifact stops recognising fails the gate."""
    return float(np.min(_present_recalls(logits, labels)))


@_builtin("macro_f1", "macro-F1")
def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes that occur in the labels or the predictions (as scikit-learn's
    ``f1_score(average="macro")``); a class never predicted scores 0."""
    pred = logits.argmax(1)
    scores = []
    for c in np.union1d(labels, pred):
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def is_user_metric(spec: str) -> bool:
    return ":" in spec


def check_name(spec: str) -> str:
    """A config's ``metric:`` value: a built-in's name or ``package.module:function`` (ValueError otherwise)."""
    import re

    from .config import FACTORY_PATTERN

    if is_user_metric(spec):
        if not re.match(FACTORY_PATTERN, spec):
            raise ValueError(f"'{spec}' is not package.module:function")
    elif spec not in METRICS:
        raise ValueError(f"unknown metric '{spec}'; available: {', '.join(METRICS.names())}; {USER_FIX}")
    return spec


def resolve_metric(spec: str, num_classes: int | None = None) -> Metric:
    """The metric a config names, checked against the model's class count when it is known."""
    if is_user_metric(spec):
        from .factories import load_callable
        from .fingerprint import code_digest

        fn = load_callable(spec, "metric")
        return Metric(spec, spec.partition(":")[2], fn, code=code_digest(spec))
    try:
        metric = METRICS.get(spec)
    except EdgeforgeError as exc:
        raise ConfigError(exc.message, key="metric", fix=USER_FIX) from None
    if num_classes is not None and num_classes < metric.min_classes:
        raise ConfigError(f"{spec} needs more than {metric.min_classes - 1} classes; the data has {num_classes}",
                          key="metric", fix="use top1 or macro_f1")
    return metric


def scores(logits: np.ndarray, labels: np.ndarray, metric: Metric) -> dict[str, float]:
    """Every built-in that applies to this class count, and ``metric``: recorded side by side."""
    names = [n for n in METRICS.names() if logits.shape[1] >= METRICS.get(n).min_classes]
    out = {n: METRICS.get(n)(logits, labels) for n in names}
    if metric.name not in out:
        out[metric.name] = metric(logits, labels)
    return out


def label(name: str) -> str:
    """How reports print a metric named in a manifest."""
    return METRICS.get(name).label if name in METRICS else name
