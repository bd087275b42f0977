"""Named, typed model inputs: what a student takes, in its forward's argument order.

A model takes one or more inputs, each an ``InputSpec``: a name (the artifact's input name in
every format), a shape without the batch dimension, and a dtype. Images are one float32 input
(``image_inputs((C, H, W))``, the default of every ``Carrier``); a text classifier takes token ids
and an attention mask (``token_inputs(seq_len, vocab_size)``).

Interface for the data and training side (a ``data.kind: text`` with a tokenizer):

- describe the model's inputs with ``token_inputs`` (or a tuple of ``InputSpec``) and pass them to
  ``Carrier(..., inputs=specs)``; exporters name and type every artifact input from it;
- feed batches as a tuple of tensors (or numpy arrays) in the specs' order, e.g.
  ``(input_ids[int64, B x L], attention_mask[int64, B x L])``; ``check_batch`` says in one line
  which input is wrong; ``Session.run`` / ``run_all`` take such a tuple, or one array for one input;
- ``example_inputs(specs, batch)`` gives a valid batch for export and calibration shapes (zeros for
  float inputs, token ids spread over the vocabulary, an all-ones mask).

Formats narrow what they cannot take: Core ML has no int64 inputs, so int64 ids are declared int32
there (``format_dtype``); token ids beyond 2**31 do not exist in practice. Layout transposes (NHWC)
and int8 input quantization apply only to 4-D float image inputs; integer inputs are passed
through unscaled. (Not to be confused with ``targets.InputSpec``: a profile's layout/dtype/batch.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .errors import ConfigError

Dtype = Literal["float32", "int32", "int64"]
DTYPES: tuple[str, ...] = ("float32", "int32", "int64")
Batch = np.ndarray | tuple[np.ndarray, ...] | list[np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``vocab_size`` marks token ids (values in [0, vocab_size)); an integer input
    without it is a mask or flag (examples are all ones)."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: Dtype = "float32"
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"input name '{self.name}' must be an identifier (letters, digits, _)", key="inputs",
                              fix="rename the input, e.g. input_ids")
        if self.dtype not in DTYPES:
            raise ConfigError(f"input '{self.name}': dtype '{self.dtype}' is not one of {', '.join(DTYPES)}",
                              key="inputs", fix="use float32 for features, int32/int64 for token ids and masks")
        if any(int(d) < 1 for d in self.shape):
            raise ConfigError(f"input '{self.name}': shape {list(self.shape)} has a dimension < 1", key="inputs",
                              fix="give the shape without the batch dimension, every size >= 1")
        if self.vocab_size is not None and (self.dtype == "float32" or self.vocab_size < 1):
            raise ConfigError(f"input '{self.name}': vocab_size needs an integer dtype and a size >= 1",
                              key="inputs", fix="use dtype int32/int64 for token ids")

    @property
    def is_float(self) -> bool:
        return self.dtype == "float32"

    @property
    def is_image(self) -> bool:
        """A float C, H, W input: the only kind layout transposes and image types apply to."""
        return self.is_float and len(self.shape) == 3

    @property
    def np_dtype(self) -> Any:
        return np.dtype(self.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "int32": torch.int32, "int64": torch.int64}[self.dtype]

    def example(self, batch: int) -> torch.Tensor:
        shape = (batch, *self.shape)
        if self.is_float:
            return torch.zeros(shape)
        if self.vocab_size is None:
            return torch.ones(shape, dtype=self.torch_dtype)
        count = int(np.prod(shape))
        return (torch.arange(count, dtype=torch.int64) * 7919 % self.vocab_size).reshape(shape).to(self.torch_dtype)


def image_inputs(shape: Sequence[int], name: str = "input") -> tuple[InputSpec, ...]:
    """The single float32 input of an image model (C, H, W), as every carrier had before named inputs."""
    return (InputSpec(name, tuple(int(d) for d in shape), "float32"),)


def token_inputs(seq_len: int, vocab_size: int, dtype: Dtype = "int64",
                 names: tuple[str, str] = ("input_ids", "attention_mask")) -> tuple[InputSpec, ...]:
    """Token ids (values below ``vocab_size``) and an attention mask (1 = token, 0 = padding), both ``[seq_len]``."""
    return (InputSpec(names[0], (seq_len,), dtype, vocab_size), InputSpec(names[1], (seq_len,), dtype))


def example_inputs(specs: Sequence[InputSpec], batch: int) -> tuple[torch.Tensor, ...]:
    return tuple(s.example(batch) for s in specs)


def format_dtype(spec: InputSpec, fmt: str) -> str:
    """The dtype an artifact of ``fmt`` declares for this input (Core ML takes int32, not int64)."""
    if fmt == "coreml" and spec.dtype == "int64":
        return "int32"
    return spec.dtype


def as_arrays(x: Batch) -> tuple[np.ndarray, ...]:
    """One array (a single-input batch) or a tuple/list of arrays, as a tuple in signature order."""
    if isinstance(x, np.ndarray):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(a, np.ndarray) for a in x):
        return tuple(x)
    raise TypeError(f"a batch is one numpy array or a tuple of them, got {type(x).__name__}")


def cast_input(x: np.ndarray, dtype: Any, name: str) -> np.ndarray:
    """``x`` as the artifact's dtype for this input; floats given for an integer input are an error."""
    want = np.dtype(dtype)
    if want.kind in "iu" and x.dtype.kind == "f":
        raise TypeError(f"input '{name}' takes integers ({want.name}), got {x.dtype.name} values")
    return np.ascontiguousarray(x, dtype=want)


def check_batch(specs: Sequence[InputSpec], arrays: Sequence[np.ndarray]) -> None:
    """One line naming the first input whose count, shape or kind does not match the specs."""
    if len(arrays) != len(specs):
        raise ValueError(f"the model takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}), "
                         f"got {len(arrays)}")
    for s, a in zip(specs, arrays, strict=True):
        if tuple(a.shape[1:]) != s.shape:
            raise ValueError(f"input '{s.name}': shape {list(a.shape[1:])} per example, the model takes {list(s.shape)}")
        if not s.is_float and a.dtype.kind == "f":
            raise ValueError(f"input '{s.name}' takes {s.dtype} values, got {a.dtype.name}")
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"inputs have different batch sizes: {', '.join(f'{s.name}={len(a)}' for s, a in zip(specs, arrays))}")


def batch_dims(specs: Sequence[InputSpec], name: str = "batch", max_batch: int = 1 << 16) -> tuple[dict[int, Any], ...]:
    """torch.export ``dynamic_shapes`` with one batch dimension shared by every input."""
    dim = torch.export.Dim(name, min=1, max=max_batch)
    return tuple({0: dim} for _ in specs)
