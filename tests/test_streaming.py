"""Streamed data: splits read a batch at a time from memory maps, image folders and user datasets give the
same inputs as the in-memory path, bad samples fail as one line, teacher outputs are computed once."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from edgeforge.config import AugmentConfig, DataConfig
from edgeforge.data.augment import augment_batch
from edgeforge.data.sources import load_factory, load_image_folder, load_npy, load_npz
from edgeforge.data.splits import StreamedSplit
from edgeforge.errors import DataError
from edgeforge.teacher_cache import TeacherStore
from edgeforge.training import TrainContext, compute_teacher_logits

from conftest import tiny_config, write_config

IDX = torch.tensor([5, 0, 17, 3, 3, 40])


def _cfg(**kw: Any) -> DataConfig:
    return DataConfig(train="t", val="v", test="s", **kw)


def _arrays(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 1, 6, 5), dtype=np.uint8), rng.integers(0, 3, n)


def test_memory_mapped_npz_and_npy_give_the_in_memory_inputs(tmp_path: Path) -> None:
    x, y = _arrays()
    np.savez(tmp_path / "a.npz", x=x, y=y)
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "x.npy", x)
    np.save(tmp_path / "f" / "y.npy", y)
    mem = load_npz("train", tmp_path / "a.npz", _cfg(mean=[0.5], std=[0.25]))
    for streamed in (load_npz("train", tmp_path / "a.npz", _cfg(stream=True, mean=[0.5], std=[0.25])),
                     load_npy("train", tmp_path / "f", _cfg(kind="npy", stream=True, mean=[0.5], std=[0.25]))):
        assert isinstance(streamed, StreamedSplit) and torch.equal(streamed.y, mem.y)
        assert torch.equal(streamed.take(IDX), mem.take(IDX))  # unsorted, repeated rows come back in order
        got = [(i, xb, yb) for i, xb, yb in streamed.load([IDX[:3], IDX[3:]], workers=1)]
        assert torch.equal(torch.cat([b[1] for b in got]), mem.take(IDX))
        assert torch.equal(torch.cat([b[2] for b in got]), mem.y[IDX])
    assert torch.equal(torch.cat([xb for xb, _ in streamed.batches(7)]), mem.x)


def test_a_truncated_array_file_is_an_error_not_garbage(tmp_path: Path) -> None:
    x, y = _arrays()
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "x.npy", x)
    np.save(tmp_path / "f" / "y.npy", y)
    split = load_npy("train", tmp_path / "f", _cfg(kind="npy", stream=True))
    raw = (tmp_path / "f" / "x.npy").read_bytes()
    (tmp_path / "f" / "x.npy").write_bytes(raw[: len(raw) - 100])  # the file shrinks under a running build
    split.take(torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"x\.npy: the file ends before row 47"):
        split.take(torch.tensor([46, 47]))


def test_a_compressed_npz_cannot_be_mapped_and_says_how_to_fix_it(tmp_path: Path) -> None:
    x, y = _arrays()
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"c\.npz: array y is compressed.*np\.savez \(not savez_compressed\)"):
        load_npz("train", tmp_path / "c.npz", _cfg(stream=True))
    assert zipfile.ZipFile(tmp_path / "c.npz").getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED


def _image_folder(root: Path, n: int = 12) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")


def test_streamed_image_folder_decodes_per_batch_like_the_in_memory_loader(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    cfg = _cfg(kind="image_folder", image_size=(8, 8))
    mem, classes = load_image_folder("train", tmp_path, cfg, None)
    streamed, same = load_image_folder("train", tmp_path, cfg.model_copy(update={"stream": True}), None)
    assert classes == same == ["cat", "dog"] and torch.equal(streamed.y, mem.y)
    assert torch.equal(torch.cat([xb for xb, _ in streamed.batches(5, workers=2)]), mem.take(torch.arange(len(mem))))
    assert streamed.input_shape == (3, 8, 8)
    digest = streamed.digest()
    (tmp_path / "dog" / "00.png").write_bytes((tmp_path / "cat" / "01.png").read_bytes())
    again, _ = load_image_folder("train", tmp_path, cfg.model_copy(update={"stream": True}), None)
    assert again.digest() != digest  # the data's content decides caches, not only the file list


def test_a_bad_image_met_in_a_worker_is_one_line_naming_the_file(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    (tmp_path / "cat" / "05.png").write_bytes(b"not a png")
    split, _ = load_image_folder("train", tmp_path, _cfg(kind="image_folder", image_size=(8, 8), stream=True), None)
    with pytest.raises(DataError) as err:
        list(split.batches(4, workers=1))
    assert "05.png: cannot read image" in str(err.value) and "\n" not in str(err.value)
    assert "Traceback" not in str(err.value)


class _Dataset(torch.utils.data.Dataset[Any]):
    def __init__(self, n: int) -> None:
        self.x, self.y = _arrays(n)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])


def test_a_users_dataset_is_streamed_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeforge.data.sources as sources

    monkeypatch.setattr(sources, "call_factory", lambda *_a: _Dataset(30))
    mem = load_factory("train", _cfg(kind="factory", factory="x.y:z"))
    streamed = load_factory("train", _cfg(kind="factory", factory="x.y:z", stream=True))
    assert torch.equal(streamed.take(IDX[IDX < 30]), mem.take(IDX[IDX < 30])) and torch.equal(streamed.y, mem.y)
    assert streamed.digest() == load_factory("train", _cfg(kind="factory", factory="x.y:z", stream=True)).digest()
    monkeypatch.setattr(sources, "call_factory", lambda *_a: iter([(np.zeros(3), 0)]))
    with pytest.raises(DataError, match="data.stream needs an indexable dataset"):
        load_factory("train", _cfg(kind="factory", factory="x.y:z", stream=True))


def test_workers_without_streaming_are_refused() -> None:
    with pytest.raises(ValueError, match="set stream: true"):
        _cfg(workers=2)


def test_augmentation_is_reproducible_from_its_seed() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    cfg = AugmentConfig(hflip=True, crop_padding=1)
    a, b = augment_batch(x, cfg, 7), augment_batch(x, cfg, 7)
    assert torch.equal(a, b) and a.shape == x.shape
    outs = {augment_batch(x, cfg, s).sum().item() for s in range(12)}
    assert len(outs) > 3  # different seeds, different crops (zero padding changes the sum)
    flipped = augment_batch(x, AugmentConfig(hflip=True), 0)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


class _Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(30, 3)
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.lin(x.flatten(1))


def test_teacher_outputs_are_computed_once_and_keyed(tmp_path: Path) -> None:
    x, y = _arrays()
    np.savez(tmp_path / "a.npz", x=x, y=y)
    split = load_npz("train", tmp_path / "a.npz", _cfg(stream=True))
    teacher, ctx, lines = _Counting(), TrainContext(), []
    store = TeacherStore(tmp_path / "cache", {"teacher": "t1", "precision": "fp32"}, lines.append)
    first = store.logits(teacher, split, ctx)
    assert teacher.rows == len(split) and torch.equal(first, compute_teacher_logits(teacher, split, ctx))
    teacher.rows = 0
    again = TeacherStore(tmp_path / "cache", {"teacher": "t1", "precision": "fp32"}, lines.append)
    assert torch.equal(again.logits(teacher, split, ctx), first) and teacher.rows == 0 and again.hits == 1
    assert any("read from" in ln for ln in lines)
    other = TeacherStore(tmp_path / "cache", {"teacher": "t1", "precision": "bf16"})
    other.logits(teacher, split, ctx)
    assert teacher.rows == len(split) and other.misses == 1  # another precision is another entry
    [path] = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(store.key(split))]
    np.save(path, np.zeros((3, 3), np.float32))  # a file that is not this split's: recomputed, not trusted
    teacher.rows = 0
    assert torch.equal(TeacherStore(tmp_path / "cache", store.identity).logits(teacher, split, ctx), first)
    assert teacher.rows == len(split)


@pytest.mark.slow
def test_a_streamed_build_trains_the_same_student_as_in_memory(tiny_assets: Path, tmp_path: Path) -> None:
    from edgeforge.pipeline import build

    changes = {"distill.epochs": 3, "qat.epochs": 1, "targets": ["onnx-cpu-int8"], "preflight": False}
    mem = build(write_config(tmp_path / "m.yaml", tiny_config(tiny_assets, tmp_path / "m", **changes)),
                log=lambda _m: None)
    lines: list[str] = []
    streamed = build(write_config(tmp_path / "s.yaml", tiny_config(
        tiny_assets, tmp_path / "s", **changes, **{"data.stream": True, "data.workers": 1})), log=lines.append)
    a, b = (json.loads((r / "manifest.json").read_text()) for r in (tmp_path / "m", tmp_path / "s"))
    assert mem.exit_code == streamed.exit_code == 0
    assert a["models"]["float_student"]["sha256"] == b["models"]["float_student"]["sha256"]
    assert a["models"]["qat_simulation"]["content_sha256"] == b["models"]["qat_simulation"]["content_sha256"]
    assert a["targets"][0]["artifact"]["sha256"] == b["targets"][0]["artifact"]["sha256"]
    # the in-memory build filled the teacher cache for its digest; the streamed split has its own key
    assert any("[teacher] computing teacher outputs for 384 train samples" in ln for ln in lines)
    assert any("[teacher] teacher outputs for 384 train samples read from" in ln for ln in lines)  # QAT reuses


@pytest.mark.slow
def test_a_second_build_reads_the_teachers_train_and_test_outputs_from_the_cache(tiny_assets: Path,
                                                                                 tmp_path: Path) -> None:
    from edgeforge.pipeline import build

    changes: dict[str, Any] = {"distill.epochs": 1, "qat.epochs": 0, "targets": ["onnx-cpu-fp32"], "gate.min_retention": 0.5,
                               "preflight": False, "data.teacher_cache": str(tmp_path / "cache")}
    first: list[str] = []
    a = build(write_config(tmp_path / "a.yaml", tiny_config(tiny_assets, tmp_path / "a", **changes)),
              log=first.append)
    # another student: every model stage runs again, the teacher does not
    second: list[str] = []
    b = build(write_config(tmp_path / "b.yaml", tiny_config(tiny_assets, tmp_path / "b", **changes,
                                                            **{"distill.seed": 1})), log=second.append)
    assert a.exit_code == b.exit_code == 0
    assert [ln for ln in first if ln.startswith("[teacher] computing")] == [
        "[teacher] computing teacher outputs for 384 train samples (cached for later builds)",
        "[teacher] computing teacher outputs for 256 test samples (cached for later builds)"]
    assert not any(ln.startswith("[teacher] computing") for ln in second)
    assert any(ln.startswith("[teacher] teacher outputs for 256 test samples read from") for ln in second)
    ma, mb = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("a", "b"))
    assert ma["models"]["float_student"]["sha256"] != mb["models"]["float_student"]["sha256"]
    assert ma["models"]["teacher"] == mb["models"]["teacher"]
