from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tiny_models import make_patterns, train_teacher

os.environ.setdefault("CI", "1")  # no progress bars in test output
# teacher outputs are cached per user; tests keep theirs away from ~/.cache (subprocess builds inherit it)
os.environ.setdefault("EDGEFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeforge-test-cache-"))
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


def _digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.45, stratify=y, random_state=0)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=2 / 3, stratify=y_rest, random_state=0)
    return {n: (torch.from_numpy(a), torch.from_numpy(b))
            for n, a, b in (("train", x_tr, y_tr), ("val", x_val, y_val), ("test", x_te, y_te))}


@pytest.fixture(scope="session")
def digits_carrier(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny CNN on scikit-learn's digits, briefly fitted, one QAT epoch with edgeforge's quantizer, the
    carrier saved and reloaded as the pipeline does (folded int8 weights); shared by the format tests."""
    pytest.importorskip("sklearn")
    from edgeforge.carrier import Carrier
    from edgeforge.config import QatConfig
    from edgeforge.data import DataBundle, Split
    from edgeforge.models.students import STUDENTS
    from edgeforge.quant.qat import load_carrier, quantization_aware_training, save_carrier

    from tiny_models import fit_classifier

    torch.manual_seed(0)
    data = DataBundle(*(Split(n, x, y) for n, (x, y) in _digits_splits().items()), num_classes=10,
                      class_names=[str(i) for i in range(10)])
    student = STUDENTS.get("convnet")(1, 10, width=8, depth=2)  # ~3.3 k parameters
    fit_classifier(student, data.train.x, data.train.y, epochs=6, lr=5e-3, batch_size=64, shuffle=True)
    out = quantization_aware_training(student, None, data, data.train, QatConfig(epochs=1, lr=5e-4),
                                      temperature=3.0, alpha=0.0, show_progress=False)
    path = tmp_path_factory.mktemp("carrier") / "qat.pt2"
    save_carrier(out.converted, data.train.x, str(path))
    quantized = load_carrier(str(path))
    carrier = Carrier(student, quantized, (1, 8, 8), 10, data.class_names, data.train.x[:64], name="digits")
    x_test = data.test.x
    with torch.no_grad():
        ref_float, ref_qat = student(x_test).numpy(), quantized(x_test).numpy()
    return {"carrier": carrier, "x": x_test.numpy(), "y": data.test.y.numpy(), "float": ref_float, "qat": ref_qat}
