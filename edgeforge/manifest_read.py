"""Read a manifest.json written by another build (or by hand) and check every key ``check`` uses.

A manifest comes from outside this process: a CI artifact, a committed baseline, a file someone
edited. Each key is checked for presence and type up front, so a damaged file ends in one line
naming the file and the key instead of a traceback halfway through a comparison.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import EdgeforgeError
from .records import SCHEMA_VERSION

MAX_BYTES = 256 * 2**20  # a 21-target manifest is ~1 MB; anything this large is not one
NUMBER = (int, float)

# key -> (accepted types, may be null); checked on every manifest and on every validated target.
TOP_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False), "host": ((dict,), False), "data": ((dict,), False),
    "data.num_classes": ((int,), False), "data.sha256": ((str,), False), "models": ((dict,), False),
    "models.teacher": ((dict,), False), "models.teacher.sha256": ((str,), True), "targets": ((list,), False),
}
TARGET_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {"name": ((str,), False), "status": ((str,), False)}
METRIC_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "metrics": ((dict,), False), "metrics.top1": (NUMBER, False), "metrics.retention": (NUMBER, True),
    "metrics.drift_points": (NUMBER, False), "metrics.reference": ((str,), False),
    "metrics.size_bytes": ((int,), False), "metrics.latency": ((dict,), True),
}
LATENCY_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "measured_on": ((str,), False), "p50_ms": (NUMBER, True), "p90_ms": (NUMBER, True),
}


def _bad(path: Path, key: str, what: str) -> EdgeforgeError:
    return EdgeforgeError(f"{path}: key '{key}' {what}; this is not a complete edgeforge manifest: rebuild it "
                          "with this edgeforge (or restore the file)")


def _lookup(doc: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    cur: Any = doc
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _check_keys(path: Path, doc: dict[str, Any], keys: dict[str, tuple[tuple[type, ...], bool]],
                prefix: str = "") -> None:
    for key, (types, nullable) in keys.items():
        found, value = _lookup(doc, key)
        if not found:
            raise _bad(path, prefix + key, "is missing")
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("number" if t in NUMBER else t.__name__ for t in dict.fromkeys(types))
            raise _bad(path, prefix + key, f"is {type(value).__name__}, not {want}{' or null' if nullable else ''}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(path, prefix + key, f"is {value}, not a finite number")


def _check_target(path: Path, i: int, t: Any) -> None:
    if not isinstance(t, dict):
        raise _bad(path, f"targets[{i}]", f"is {type(t).__name__}, not an object")
    _check_keys(path, t, TARGET_KEYS, f"targets[{i}].")
    if t["status"] != "validated":
        return
    prefix = f"targets[{i}] ({t['name']})."
    _check_keys(path, t, METRIC_KEYS, prefix)
    if t["metrics"]["size_bytes"] <= 0:
        raise _bad(path, prefix + "metrics.size_bytes", f"is {t['metrics']['size_bytes']}: a validated artifact "
                   "has bytes")
    if t["metrics"]["latency"] is not None:
        _check_keys(path, t["metrics"]["latency"], LATENCY_KEYS, prefix + "metrics.latency.")
    _check_metric(path, t["metrics"], prefix)


def _check_metric(path: Path, metrics: dict[str, Any], prefix: str) -> None:
    """``metric`` and ``value`` arrived with ``metric:``; without them the target was judged by top-1."""
    metric = metrics.get("metric", "top1")
    if not isinstance(metric, str):
        raise _bad(path, prefix + "metrics.metric", f"is {type(metric).__name__}, not str")
    if metric != "top1" or metrics.get("value") is not None:
        _check_keys(path, metrics, {"value": (NUMBER, False)}, prefix + "metrics.")


def _parse(p: Path) -> Any:
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise EdgeforgeError(f"{p}: {size:,} bytes is not a manifest (edgeforge writes about 1 MB at most)")
    if size == 0:
        raise EdgeforgeError(f"{p}: the file is empty; rebuild the manifest")
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeforgeError(f"{p}: not a JSON manifest ({exc})") from None
    except RecursionError:
        raise EdgeforgeError(f"{p}: nested too deeply to be an edgeforge manifest") from None


def read_manifest(path: str | Path, role: str) -> dict[str, Any]:
    """The manifest at ``path`` (``role``: 'new' or 'baseline', for messages), every key check uses verified."""
    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        p = p / "manifest.json"
    if not p.is_file():
        raise EdgeforgeError(f"{role} manifest not found: {p}")
    m = _parse(p)
    if not isinstance(m, dict) or m.get("schema") != SCHEMA_VERSION:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise EdgeforgeError(f"{p}: manifest schema {got!r} is not {SCHEMA_VERSION!r}; rebuild it with this edgeforge")
    _check_keys(p, m, TOP_KEYS)
    for i, t in enumerate(m["targets"]):
        _check_target(p, i, t)
    return m
