"""Config files fuzzed with hypothesis: any input gives a valid config or a clean one-line ConfigError."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeforge.config import load_config
from edgeforge.errors import ConfigError
from edgeforge.schema import parse
from edgeforge.targets import TargetProfile

BASE: dict[str, Any] = {
    "name": "fuzz",
    "teacher": {"factory": "m:teacher", "checkpoint": "t.pt"},
    "student": {"family": "convnet", "width": 8, "depth": 1},
    "data": {"kind": "npz", "train": "a.npz", "val": "b.npz", "test": "c.npz", "calibration": {"samples": 8}},
    "distill": {"epochs": 2, "temperature": 2.0, "alpha": 0.5, "hints": [{"teacher": "a", "student": "b"}]},
    "qat": {"epochs": 1, "lr": 0.001},
    "targets": ["onnx-cpu-int8"],
    "gate": {"min_retention": 0.9},
}
KEYS = ["name", "teacher", "student", "data", "distill", "qat", "targets", "gate", "epochs", "lr", "alpha",
        "temperature", "factory", "checkpoint", "kind", "calibration", "samples", "hints", "width", "batch",
        "format", "precision", "input", "runtime", "threads", "latency", "ssh", "budgets", "x", "é", ""]
leaves = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.sampled_from(["onnx", "int8", "NHWC", "dynamic", "m:f", "1e-3"]))
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=12)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def _load(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "edgeforge.yaml"
        p.write_text(text, encoding="utf-8")
        try:
            lc = load_config(p)
        except ConfigError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg and str(p) in msg, msg
            return
        assert lc.config.name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_configs_load_or_fail_cleanly(data: st.DataObject) -> None:
    cfg = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(cfg)
        path = data.draw(st.sampled_from(paths))
        _set(cfg, path, data.draw(values))
    _load(yaml.safe_dump(cfg, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(doc=values)
def test_arbitrary_yaml_documents(doc: Any) -> None:
    _load(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_target_profiles(doc: dict[str, Any]) -> None:
    doc = {"name": "t", "format": "onnx", "precision": "int8", **doc}
    try:
        parse(TargetProfile, doc, "t.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("t.yaml: ") and "\n" not in str(exc)
