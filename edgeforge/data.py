"""Data splits held as tensors: loaders for .npz arrays, image folders and user factories."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import CalibrationConfig, DataConfig, LoadedConfig
from .errors import DataError
from .factories import call_factory

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    name: str
    x: torch.Tensor  # float32, N x C x H x W
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.x.numpy().tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            h.update(s.digest().encode())
        return h.hexdigest()


# Every target must hold the inputs: fp16 (Core ML, ONNX fp16) tops out at 65504.
MAX_ABS_INPUT = 65504.0


def _labels(source: str, name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{source}: labels must be one integer per sample; got shape {y.shape} for {n} samples")
    if np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.bool_):
        labels = y
    elif np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and np.all(np.mod(y, 1) == 0):
        labels = y
    else:
        raise DataError(f"{source}: labels must be integers (class indices), got {y.dtype}")
    if (labels < 0).any():
        raise DataError(f"{source}: split '{name}' has negative labels; labels are class indices 0..K-1")
    if float(labels.max()) >= 2**62:  # before the int64 cast: a huge float would wrap around
        raise DataError(f"{source}: split '{name}' has label {labels.max():.0f}; labels are class indices 0..K-1")
    return labels.astype(np.int64)


def _inputs(source: str, name: str, x: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.dtype == np.bool_:
        raise DataError(f"{source}: inputs of split '{name}' have dtype {x.dtype}; need real numbers (float, or uint8 pixels)")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{source}: inputs must be N x C x H x W (or N x H x W), got shape {x.shape}")
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        xf = x.astype(np.float32) * scale
    if not np.isfinite(xf).all():
        bad = int((~np.isfinite(xf)).reshape(len(xf), -1).any(axis=1).sum())
        raise DataError(f"{source}: {bad} sample(s) of split '{name}' hold NaN or inf; clean or drop them")
    top = float(np.abs(xf).max())
    if top > MAX_ABS_INPUT:
        raise DataError(f"{source}: split '{name}' holds a value of {top:.3g}; inputs beyond +-{MAX_ABS_INPUT:g} do not "
                        "fit fp16 targets: scale them (e.g. to 0..1) or set data.mean / data.std")
    return xf


def _from_arrays(name: str, source: str, x: np.ndarray, y: np.ndarray, cfg: DataConfig) -> Split:
    if x.shape[0] == 0:
        raise DataError(f"{source}: split '{name}' is empty; it needs at least one sample")
    labels = _labels(source, name, y, x.shape[0])
    t = torch.from_numpy(np.ascontiguousarray(_inputs(source, name, x)))
    if cfg.mean is not None or cfg.std is not None:
        c = t.shape[1]
        mean = torch.tensor(cfg.mean or [0.0] * c).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std or [1.0] * c).view(1, -1, 1, 1)
        if mean.numel() != c or std.numel() != c:
            raise DataError(f"data.mean/std: need {c} values (one per channel)")
        if (std == 0).any():
            raise DataError("data.std: a standard deviation of 0 divides by zero; use 1 for an unscaled channel")
        t = (t - mean) / std
    return Split(name, t, torch.from_numpy(labels))


def _load_npz(name: str, path: Path, cfg: DataConfig) -> Split:
    if not path.is_file():
        raise DataError(f"data.{name}: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (cfg.x_key, cfg.y_key) if k not in z.files]
            if missing:
                raise DataError(
                    f"{path}: no array named {', '.join(missing)} (has: {', '.join(z.files) or 'none'}); "
                    "set data.x_key / data.y_key"
                )
            x, y = z[cfg.x_key], z[cfg.y_key]
    except DataError:
        raise
    except Exception as exc:  # numpy raises several types for corrupt archives
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    return _from_arrays(name, str(path), x, y, cfg)


def _load_image_folder(name: str, path: Path, cfg: DataConfig, classes: list[str] | None) -> tuple[Split, list[str]]:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image_folder data needs Pillow: pip install pillow") from None
    if not path.is_dir():
        raise DataError(f"data.{name}: folder not found: {path}")
    found = sorted(d.name for d in path.iterdir() if d.is_dir())
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{path}: class folders {', '.join(unknown)} are not in the training classes")
    if cfg.image_size is None:
        raise DataError("data.image_size: image_folder data needs image_size: [height, width]")
    h, w = cfg.image_size
    xs, ys = [], []
    for label, cls in enumerate(classes):
        folder = path / cls
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                continue
            try:
                img = Image.open(f).convert("L" if cfg.grayscale else "RGB").resize((w, h))
            except Exception as exc:
                raise DataError(f"{f}: cannot read image ({exc})") from None
            arr = np.asarray(img, dtype=np.uint8)
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: split '{name}' has no images (expected <class>/<image>.png folders)")
    return _from_arrays(name, str(path), np.stack(xs), np.array(ys), cfg), classes


def _load_factory(name: str, cfg: DataConfig) -> Split:
    if cfg.factory is None:
        raise DataError("data.factory: kind 'factory' needs a factory: package.module:function")
    dataset = call_factory(cfg.factory, "data.factory", name)
    xs, ys = [], []
    try:
        for item in dataset:
            x, y = item[0], item[1]
            xs.append(np.asarray(x))  # dtype checked with the rest: strings and complex are refused there
            ys.append(int(y))
    except (TypeError, IndexError, ValueError) as exc:
        raise DataError(f"data.factory: split '{name}' must yield (input, label) pairs ({exc})") from None
    if not xs:
        raise DataError(f"data.factory: split '{name}' is empty")
    try:
        x = np.stack(xs)
    except ValueError:
        shapes = sorted({a.shape for a in xs})[:3]
        raise DataError(f"data.factory: split '{name}' yields inputs of different shapes ({shapes}); resize them") from None
    return _from_arrays(name, f"data.factory({name!r})", x, np.array(ys), cfg)


def load_data(lc: LoadedConfig) -> DataBundle:
    cfg = lc.config.data
    splits: dict[str, Split] = {}
    classes = cfg.class_names
    for name in SPLITS:
        if cfg.kind == "npz":
            splits[name] = _load_npz(name, lc.resolve(getattr(cfg, name)), cfg)
        elif cfg.kind == "image_folder":
            splits[name], classes = _load_image_folder(name, lc.resolve(getattr(cfg, name)), cfg, classes)
        else:
            splits[name] = _load_factory(name, cfg)
    shape = splits["train"].x.shape[1:]
    for s in splits.values():
        if s.x.shape[1:] != shape:
            raise DataError(f"data.{s.name}: input shape {tuple(s.x.shape[1:])} differs from train's {tuple(shape)}")
    num_classes = _num_classes(splits, classes)
    names = list(classes) if classes else [str(i) for i in range(num_classes)]
    return DataBundle(splits["train"], splits["val"], splits["test"], num_classes, names)


def _num_classes(splits: dict[str, Split], classes: list[str] | None) -> int:
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


def calibration_indices(split: Split, cal: CalibrationConfig) -> torch.Tensor:
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
    idx = calibration_indices(src, cal)
    return Split(f"calibration({cal.name})", src.x[idx], src.y[idx])
