"""Teacher sources (factory, TorchScript, torch.export program), data kinds, hints, teacher cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeforge.config import DistillConfig, load_config
from edgeforge.data import load_data
from edgeforge.distill import distill
from edgeforge.errors import ConfigError, DataError
from edgeforge.models.loading import load_teacher
from edgeforge.pipeline import plan_build

from tiny_models import make_patterns, teacher


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_torchscript_and_program_teachers(make_config, tiny_assets: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = load_teacher(load_config(make_config()))
    ts = tmp_path / "teacher.ts"
    torch.jit.trace(ref, torch.randn(2, 1, 8, 8)).save(str(ts))
    got = load_teacher(load_config(make_config(**{"teacher.factory": None, "teacher.checkpoint": None,
                                                  "teacher.torchscript": str(ts)})))
    assert _same_outputs(ref, got)
    pt2 = tmp_path / "teacher.pt2"
    torch.export.save(torch.export.export(ref, (torch.randn(2, 1, 8, 8),),
                                          dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},)), str(pt2))
    got = load_teacher(load_config(make_config(**{"teacher.factory": None, "teacher.checkpoint": None,
                                                  "teacher.program": str(pt2)})))
    assert _same_outputs(ref, got)


def test_corrupt_checkpoint(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    from edgeforge.errors import ModelError

    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_teacher(load_config(make_config(**{"teacher.checkpoint": str(bad)})))
    bad.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        load_teacher(load_config(make_config(**{"teacher.checkpoint": str(bad)})))


def test_image_folder_data(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    Image = pytest.importorskip("PIL.Image")
    for split, n, seed in (("train", 24, 0), ("val", 8, 1), ("test", 8, 2)):
        x, y = make_patterns(n, seed)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = tmp_path / "imgs" / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            arr = (np.clip(img[0], 0, 1) * 255).astype(np.uint8)
            Image.fromarray(arr).resize((16, 16)).save(d / f"{i}.png")
    cfg = make_config(**{"data.kind": "image_folder", "data.image_size": [8, 8], "data.grayscale": True,
                         **{f"data.{s}": str(tmp_path / "imgs" / s) for s in ("train", "val", "test")}})
    data = load_data(load_config(cfg))
    assert data.input_shape == (1, 8, 8) and len(data.train) == 24
    assert data.class_names[:2] == ["class0", "class1"]
    assert float(data.train.x.max()) <= 1.0


def test_factory_data(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mydata.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\nfrom tiny_models import make_patterns\n"
        "def splits(name):\n    x, y = make_patterns(40, {'train': 0, 'val': 1, 'test': 2}[name])\n"
        "    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))\n")
    lc = load_config(make_config(**{"data.kind": "factory", "data.factory": "mydata:splits"}))
    plan_build(lc)  # the config folder is importable
    data = load_data(lc)
    assert len(data.test) == 40 and data.num_classes == 4


def test_label_never_in_train(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = make_patterns(20, 5)
    y[3] = 9
    np.savez(tmp_path / "test.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"data\.test: label 9 never occurs in train"):
        load_data(load_config(make_config(**{"data.test": str(tmp_path / "test.npz")})))


class CountingTeacher(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_teacher_logits_computed_once_without_augmentation(make_config) -> None:  # type: ignore[no-untyped-def]
    plan = plan_build(load_config(make_config()))
    t = CountingTeacher(plan.teacher)
    cfg = DistillConfig(epochs=3, batch_size=32, lr=0.01)
    distill(t, plan.new_student(), plan.data, cfg, augmented=False, show_progress=False)
    assert t.calls == 2  # 384 training samples in two 256-sample inference batches, for all 3 epochs
    t.calls = 0
    distill(t, plan.new_student(), plan.data, cfg, augmented=True, show_progress=False)
    assert t.calls == 3 * 12  # augmented data: the teacher runs on every batch of every epoch


def test_feature_hints_train_and_bad_names_rejected(make_config) -> None:  # type: ignore[no-untyped-def]
    plan = plan_build(load_config(make_config()))
    cfg = DistillConfig(epochs=2, batch_size=64, lr=0.01, hints=[{"teacher": "body.5", "student": "features.0"}])
    out = distill(plan.teacher, plan.new_student(), plan.data, cfg, augmented=False, show_progress=False)
    assert len(out.result.history) == 2 and out.result.best_val_top1 > 0.25
    bad = DistillConfig(epochs=1, hints=[{"teacher": "body.99", "student": "features.0"}])
    with pytest.raises(ConfigError, match="teacher has no submodule 'body.99'"):
        distill(plan.teacher, plan.new_student(), plan.data, bad, augmented=False, show_progress=False)


def test_factory_teacher_without_checkpoint_gets_bytes(make_config) -> None:  # type: ignore[no-untyped-def]
    plan = plan_build(load_config(make_config(**{"teacher.checkpoint": None})))
    n = sum(p.numel() for p in teacher().parameters())
    assert plan.teacher_bytes > 4 * n
