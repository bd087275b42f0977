"""Where splits come from: .npz archives, .npy folders, image folders and user factories,
each either loaded into memory or streamed (``data.stream``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..factories import call_factory
from .arrays import map_npy, map_npz_member
from .checks import labels, stack_inputs, to_tensor
from .readers import IMAGE_SUFFIXES, ArrayReader, DatasetReader, ImageReader, decode
from .splits import Split, SplitBase, StreamedSplit


def _in_memory(name: str, source: str, x: np.ndarray, y: np.ndarray, cfg: DataConfig) -> Split:
    if x.shape[0] == 0:
        raise DataError(f"{source}: split '{name}' is empty; it needs at least one sample")
    y64 = labels(source, name, y, x.shape[0])
    return Split(name, to_tensor(source, name, x, cfg), torch.from_numpy(y64))


def _streamed(name: str, reader: ArrayReader | ImageReader | DatasetReader, y: np.ndarray) -> StreamedSplit:
    if len(y) == 0:
        raise DataError(f"{reader.source}: split '{name}' is empty; it needs at least one sample")
    split = StreamedSplit(name, reader, torch.from_numpy(labels(reader.source, name, y, len(y))))
    split.take(torch.tensor([0, len(y) - 1]))  # a wrong dtype or shape fails now, not in epoch 1
    return split


def load_npz(name: str, path: Path, cfg: DataConfig) -> SplitBase:
    if not path.is_file():
        raise DataError(f"data.{name}: file not found: {path}")
    if cfg.stream:
        y = np.asarray(map_npz_member(path, cfg.y_key))
        return _streamed(name, ArrayReader(str(path), name, path, cfg.x_key, cfg), y)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (cfg.x_key, cfg.y_key) if k not in z.files]
            if missing:
                raise DataError(f"{path}: no array named {', '.join(missing)} (has: {', '.join(z.files) or 'none'}); "
                                "set data.x_key / data.y_key")
            x, y = z[cfg.x_key], z[cfg.y_key]
    except DataError:
        raise
    except Exception as exc:  # numpy raises several types for corrupt archives
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    return _in_memory(name, str(path), x, y, cfg)


def load_npy(name: str, folder: Path, cfg: DataConfig) -> SplitBase:
    """A folder holding ``<x_key>.npy`` and ``<y_key>.npy``."""
    if not folder.is_dir():
        raise DataError(f"data.{name}: folder not found: {folder} (kind npy: a folder with "
                        f"{cfg.x_key}.npy and {cfg.y_key}.npy)")
    xp, yp = folder / f"{cfg.x_key}.npy", folder / f"{cfg.y_key}.npy"
    y = np.asarray(map_npy(yp))
    if cfg.stream:
        return _streamed(name, ArrayReader(str(xp), name, xp, None, cfg), y)
    return _in_memory(name, str(xp), np.asarray(map_npy(xp)), y, cfg)


def image_files(name: str, path: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    if not path.is_dir():
        raise DataError(f"data.{name}: folder not found: {path}")
    found = sorted(d.name for d in path.iterdir() if d.is_dir())
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{path}: class folders {', '.join(unknown)} are not in the training classes")
    files, ys = [], []
    for label, cls in enumerate(classes):
        folder = path / cls
        if folder.is_dir():
            picked = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            files += picked
            ys += [label] * len(picked)
    if not files:
        raise DataError(f"{path}: split '{name}' has no images (expected <class>/<image>.png folders)")
    return files, ys, classes


def load_image_folder(name: str, path: Path, cfg: DataConfig, classes: list[str] | None
                      ) -> tuple[SplitBase, list[str]]:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("image_folder data needs Pillow: pip install pillow") from None
    if cfg.image_size is None:
        raise DataError("data.image_size: image_folder data needs image_size: [height, width]")
    files, ys, classes = image_files(name, path, classes)
    if cfg.stream:
        return _streamed(name, ImageReader(str(path), name, files, cfg), np.array(ys)), classes
    return _in_memory(name, str(path), np.stack([decode(f, cfg) for f in files]), np.array(ys), cfg), classes


def load_factory(name: str, cfg: DataConfig) -> SplitBase:
    if cfg.factory is None:
        raise DataError("data.factory: kind 'factory' needs a factory: package.module:function")
    dataset = call_factory(cfg.factory, "data.factory", name)
    if cfg.stream:
        return _stream_factory(name, dataset, cfg)
    xs, ys = [], []
    try:
        for item in dataset:
            xs.append(np.asarray(item[0]))  # dtype checked with the rest: strings and complex are refused there
            ys.append(int(item[1]))
    except (TypeError, IndexError, ValueError) as exc:
        raise DataError(f"data.factory: split '{name}' must yield (input, label) pairs ({exc})") from None
    if not xs:
        raise DataError(f"data.factory: split '{name}' is empty")
    x = stack_inputs(xs, f"data.factory: split '{name}'")
    return _in_memory(name, f"data.factory({name!r})", x, np.array(ys), cfg)


def _stream_factory(name: str, dataset: object, cfg: DataConfig) -> SplitBase:
    """One pass over the user's dataset collects the labels and hashes the inputs, a batch at a time."""
    source = f"data.factory({name!r})"
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(f"{source}: data.stream needs an indexable dataset (__len__ and __getitem__, like "
                        "torch.utils.data.Dataset); an iterable can only be loaded with data.stream: false")
    n = len(dataset)
    reader = DatasetReader(source, name, dataset, cfg)
    h, ys = hashlib.sha256(), []
    for i in range(0, n, 256):
        x, y = reader.read_pairs(np.arange(i, min(i + 256, n)))
        h.update(x.numpy().tobytes())
        ys += y
    reader.input_digest = h.hexdigest()
    return _streamed(name, reader, np.array(ys, dtype=np.int64))
