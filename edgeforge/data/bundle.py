"""The three splits of a build, their classes, and how the calibration subset is picked."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..config import CalibrationConfig, LoadedConfig
from ..errors import DataError
from ..inputs import InputSpec, image_inputs
from .sources import load_factory, load_image_folder, load_npy, load_npz
from .splits import Split, SplitBase
from .text import load_text, load_tokenizer, text_signature

SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    train: SplitBase
    val: SplitBase
    test: SplitBase
    num_classes: int
    class_names: list[str]
    workers: int = 0  # DataLoader workers for streamed splits
    signature: tuple[InputSpec, ...] = ()  # named, typed model inputs; empty: one float image input

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        return self.signature or image_inputs(self.input_shape)

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            h.update(s.digest().encode())
        return h.hexdigest()


def load_data(lc: LoadedConfig) -> DataBundle:
    cfg = lc.config.data
    splits: dict[str, SplitBase] = {}
    classes = cfg.class_names
    signature: tuple[InputSpec, ...] = ()
    tokenizer = load_tokenizer(lc.resolve(cfg.text.tokenizer)) if cfg.text is not None else None
    for name in SPLITS:
        if cfg.kind == "text" and cfg.text is not None:
            splits[name] = load_text(name, lc.resolve(getattr(cfg, name)), cfg.text, tokenizer)
            signature = text_signature(cfg.text, tokenizer)
        elif cfg.kind == "npz":
            splits[name] = load_npz(name, lc.resolve(getattr(cfg, name)), cfg)
        elif cfg.kind == "npy":
            splits[name] = load_npy(name, lc.resolve(getattr(cfg, name)), cfg)
        elif cfg.kind == "image_folder":
            splits[name], classes = load_image_folder(name, lc.resolve(getattr(cfg, name)), cfg, classes)
        else:
            splits[name] = load_factory(name, cfg)
    shape = splits["train"].input_shape
    for s in splits.values():
        if s.input_shape != shape:
            raise DataError(f"data.{s.name}: input shape {s.input_shape} differs from train's {shape}")
    num_classes = _num_classes(splits, classes)
    names = list(classes) if classes else [str(i) for i in range(num_classes)]
    return DataBundle(splits["train"], splits["val"], splits["test"], num_classes, names, cfg.workers, signature)


def _num_classes(splits: dict[str, SplitBase], classes: list[str] | None) -> int:
    """Classes are 0..max label of train; checked before anything is sized by that number."""
    top = int(splits["train"].y.max())
    n = len(splits["train"])
    if classes is not None and top >= len(classes):
        raise DataError(f"data.class_names: {len(classes)} names for {top + 1} classes (data.train has label {top})")
    if classes is None and top >= n:
        raise DataError(f"data.train: label {top} but only {n} training samples, so most classes have none; labels "
                        "are class indices 0..K-1 (list data.class_names to declare K)")
    num_classes = top + 1
    for name in ("val", "test"):
        top = int(splits[name].y.max())
        if top >= num_classes:
            raise DataError(f"data.{name}: label {top} never occurs in train (classes 0..{num_classes - 1}); check the labels")
    if classes is not None and len(classes) != num_classes:
        raise DataError(f"data.class_names: {len(classes)} names for {num_classes} classes")
    return num_classes


def calibration_indices(split: SplitBase, cal: CalibrationConfig) -> torch.Tensor:
    """Pick the calibration subset deterministically (stratified keeps every class represented)."""
    n = len(split)
    k = min(cal.samples, n)
    g = torch.Generator().manual_seed(cal.seed)
    if cal.selection == "first":
        return torch.arange(k)
    if cal.selection == "random":
        return torch.randperm(n, generator=g)[:k].sort().values
    classes = split.y.unique()
    per = [torch.nonzero(split.y == c).flatten() for c in classes]
    per = [p[torch.randperm(len(p), generator=g)] for p in per]
    picked: list[int] = []
    i = 0
    while len(picked) < k:
        for p in per:
            if i < len(p) and len(picked) < k:
                picked.append(int(p[i]))
        i += 1
    return torch.tensor(sorted(picked))


def calibration_split(data: DataBundle, cal: CalibrationConfig) -> Split:
    src = data.train if cal.split == "train" else data.val
    return src.subset(calibration_indices(src, cal), f"calibration({cal.name})")
