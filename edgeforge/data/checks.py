"""What every sample must be before a model sees it: integer labels, finite real inputs that fit fp16.

Shared by the in-memory loaders (checked once, whole split) and the streamed ones (checked per batch,
in the worker that decoded it), so both refuse the same data with the same message.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError

# Every target must hold the inputs: fp16 (Core ML, ONNX fp16) tops out at 65504.
MAX_ABS_INPUT = 65504.0


def labels(source: str, name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{source}: labels must be one integer per sample; got shape {y.shape} for {n} samples")
    if np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.bool_):
        out = y
    elif np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and np.all(np.mod(y, 1) == 0):
        out = y
    else:
        raise DataError(f"{source}: labels must be integers (class indices), got {y.dtype}")
    if n and (out < 0).any():
        raise DataError(f"{source}: split '{name}' has negative labels; labels are class indices 0..K-1")
    if n and float(out.max()) >= 2**62:  # before the int64 cast: a huge float would wrap around
        raise DataError(f"{source}: split '{name}' has label {out.max():.0f}; labels are class indices 0..K-1")
    return out.astype(np.int64)


def inputs(source: str, name: str, x: np.ndarray) -> np.ndarray:
    """N x C x H x W float32 (N x H x W gets a channel axis; uint8 pixels are scaled to 0..1)."""
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
    top = float(np.abs(xf).max()) if xf.size else 0.0
    if top > MAX_ABS_INPUT:
        raise DataError(f"{source}: split '{name}' holds a value of {top:.3g}; inputs beyond +-{MAX_ABS_INPUT:g} do not "
                        "fit fp16 targets: scale them (e.g. to 0..1) or set data.mean / data.std")
    return xf


def stack_inputs(xs: list[np.ndarray], where: str) -> np.ndarray:
    """One array of the samples' inputs; ``where`` (e.g. "data.factory: split 'train'") opens the error."""
    try:
        return np.stack(xs)
    except ValueError:
        shapes = sorted({a.shape for a in xs})[:3]
        raise DataError(f"{where} yields inputs of different shapes ({shapes}); resize them") from None


def normalise(t: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """(x - mean) / std per channel, when the config asks for it."""
    if cfg.mean is None and cfg.std is None:
        return t
    c = t.shape[1]
    mean = torch.tensor(cfg.mean or [0.0] * c).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std or [1.0] * c).view(1, -1, 1, 1)
    if mean.numel() != c or std.numel() != c:
        raise DataError(f"data.mean/std: need {c} values (one per channel)")
    if (std == 0).any():
        raise DataError("data.std: a standard deviation of 0 divides by zero; use 1 for an unscaled channel")
    return (t - mean) / std


def to_tensor(source: str, name: str, x: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    return normalise(torch.from_numpy(np.ascontiguousarray(inputs(source, name, x))), cfg)
