from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tiny_models import make_patterns, train_teacher

os.environ.setdefault("CI", "1")  # no progress bars in test output
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """npz splits + a trained tiny teacher checkpoint, shared by the whole session."""
    root = tmp_path_factory.mktemp("tiny")
    for name, n, seed in (("train", 384, 0), ("val", 128, 1), ("test", 256, 2)):
        x, y = make_patterns(n, seed)
        np.savez(root / f"{name}.npz", x=x, y=y)
    x, y = make_patterns(384, 0)
    torch.save(train_teacher(x, y).state_dict(), root / "teacher.pt")
    return root


def tiny_config(assets: Path, out: Path, **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "tiny",
        "output": str(out),
        "progress": False,
        "teacher": {"factory": "tiny_models:teacher", "checkpoint": str(assets / "teacher.pt")},
        "student": {"family": "convnet", "width": 8, "depth": 1},
        "data": {
            "kind": "npz",
            "train": str(assets / "train.npz"),
            "val": str(assets / "val.npz"),
            "test": str(assets / "test.npz"),
            "calibration": {"samples": 64},
        },
        "distill": {"epochs": 12, "batch_size": 32, "lr": 0.01, "temperature": 3.0, "alpha": 0.7},
        "qat": {"epochs": 2, "batch_size": 64, "lr": 0.001},
        "targets": ["onnx-cpu-fp32", "onnx-cpu-int8"],
        "gate": {"min_retention": 0.9, "max_drift_points": 2.0},
        "validation": {"warmup": 2, "runs": 5},
    }
    for key, value in changes.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def make_config(tiny_assets: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(**changes: Any) -> Path:
        return write_config(tmp_path / "edgeforge.yaml", tiny_config(tiny_assets, tmp_path / "out", **changes))

    return make


@pytest.fixture(scope="session")
def tiny_build(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real tiny build (ONNX fp32 + int8), shared by the tests that read its outputs."""
    from edgeforge.pipeline import build

    root = tmp_path_factory.mktemp("build")
    cfg = write_config(root / "edgeforge.yaml", tiny_config(tiny_assets, root / "out"))
    return cfg, build(cfg, log=lambda _m: None)
