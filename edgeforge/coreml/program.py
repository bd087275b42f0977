"""Load a saved ML program (.mlpackage) into plain Python: ops, typed values, weights as numpy.

The spec is parsed with coremltools' own protobuf classes and weights are read from the
package's weight.bin blobs with coremltools' blob reader (``libmilstoragepython``, shipped in
the Linux wheels too), so nothing here depends on the macOS-only Core ML runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeforgeError, RuntimeUnavailable, require

# MIL_pb2.DataType -> numpy dtype (STRING and the sub-byte types are handled separately).
_NP = {1: np.bool_, 10: np.float16, 11: np.float32, 12: np.float64, 21: np.int8, 22: np.int16,
       23: np.int32, 24: np.int64, 31: np.uint8, 32: np.uint16, 33: np.uint32, 34: np.uint64}
STRING = 2
# Blob reader method per data type; sub-byte readers return one unpacked element per byte.
_BLOB_READ = {10: "read_fp16_data", 11: "read_float_data", 21: "read_int8_data", 22: "read_int16_data",
              23: "read_int32_data", 25: "read_int4_data", 31: "read_uint8_data", 32: "read_uint16_data",
              33: "read_uint32_data", 35: "read_uint4_data", 36: "read_uint2_data", 37: "read_uint1_data",
              38: "read_uint6_data", 39: "read_uint3_data"}
_SUB_BYTE_NP = {25: np.int8, 35: np.uint8, 36: np.uint8, 37: np.uint8, 38: np.uint8, 39: np.uint8}


class ProgramError(EdgeforgeError):
    """The package is not an ML program this loader understands (names what and where)."""


@dataclass
class TensorType:
    dtype: int  # MIL_pb2.DataType value
    shape: tuple[int | None, ...] | None  # None: unknown rank; None entries: unknown dims

    @property
    def np_dtype(self) -> Any:
        return _NP.get(self.dtype, _SUB_BYTE_NP.get(self.dtype))


@dataclass
class Op:
    type: str
    name: str
    inputs: dict[str, list[tuple[str, Any]]]  # param -> [("name", var) | ("value", array)]
    attributes: dict[str, Any]
    outputs: list[tuple[str, TensorType]]
    has_blocks: bool = False


@dataclass
class Program:
    path: Path
    opset: str
    inputs: list[tuple[str, TensorType]]
    outputs: list[str]
    ops: list[Op]
    metadata: dict[str, str] = field(default_factory=dict)
    specification_version: int = 0

    def histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for op in self.ops:
            hist[op.type] = hist.get(op.type, 0) + 1
        return dict(sorted(hist.items()))


def _tensor_type(vt: Any) -> TensorType:
    kind = vt.WhichOneof("type")
    if kind != "tensorType":
        raise ProgramError(f"value type '{kind}' is not supported (only tensors)")
    tt = vt.tensorType
    if tt.rank < 0:
        return TensorType(tt.dataType, None)
    dims = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tt.dimensions)
    return TensorType(tt.dataType, dims)


class _Weights:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._readers: dict[Path, Any] = {}

    def read(self, blob: Any, tt: TensorType) -> np.ndarray:
        name = blob.fileName
        path = self.model_dir / name[len("@model_path/"):] if name.startswith("@model_path/") else self.model_dir / name
        if path not in self._readers:
            if not path.is_file():
                raise ProgramError(f"{self.model_dir}: weight file {name} is missing")
            try:
                from coremltools import libmilstoragepython as storage
            except ImportError as exc:
                raise RuntimeUnavailable(f"coremltools' blob reader cannot load here ({exc})") from None
            self._readers[path] = storage._BlobStorageReader(str(path))
        method = _BLOB_READ.get(tt.dtype)
        if method is None:
            raise ProgramError(f"weights of data type {tt.dtype} cannot be read")
        arr = getattr(self._readers[path], method)(blob.offset)
        if tt.dtype == 10:
            arr = arr.view(np.float16)
        arr = np.asarray(arr, dtype=tt.np_dtype)
        shape: tuple[int, ...] = tuple(int(d or 0) for d in tt.shape) if tt.shape else ()  # constants are static
        size = int(np.prod(shape)) if shape else 1
        return arr[:size].reshape(shape)  # sub-byte blobs are padded to whole bytes


def _value(v: Any, weights: _Weights) -> Any:
    tt = _tensor_type(v.type)
    which = v.WhichOneof("value")
    if which == "blobFileValue":
        return weights.read(v.blobFileValue, tt)
    if which != "immediateValue":
        raise ProgramError(f"value kind '{which}' is not supported")
    iv = v.immediateValue
    if iv.WhichOneof("value") != "tensor":
        return None  # lists/dictionaries appear only in program attributes, which no kernel reads
    t = iv.tensor
    kind = t.WhichOneof("value")
    shape = tt.shape or ()
    if tt.dtype == STRING:
        vals = list(t.strings.values)
        return vals[0] if not shape else np.array(vals, dtype=object).reshape(shape)
    if kind == "bytes":
        if tt.dtype in _SUB_BYTE_NP:
            raise ProgramError(f"inline sub-byte tensors (data type {tt.dtype}) are not supported")
        arr = np.frombuffer(t.bytes.values, dtype=tt.np_dtype)
    else:
        raw = {"floats": t.floats.values, "ints": t.ints.values, "bools": t.bools.values,
               "longInts": t.longInts.values, "doubles": t.doubles.values}.get(kind or "", [])
        arr = np.array(list(raw), dtype=tt.np_dtype)
    return arr.reshape(shape)


def model_dir_of(package: Path) -> tuple[Path, Path]:
    """(spec file, folder '@model_path' refers to) of an .mlpackage, found through its Manifest.json."""
    manifest = package / "Manifest.json"
    if not manifest.is_file():
        raise ProgramError(f"{package}: not an .mlpackage (no Manifest.json)")
    info = json.loads(manifest.read_text())
    entry = info["itemInfoEntries"][info["rootModelIdentifier"]]
    spec = package / "Data" / entry["path"]
    return spec, spec.parent


def load_program(package: str | Path, function: str = "main") -> Program:
    require("coremltools", "coreml")
    from coremltools.proto import Model_pb2

    package = Path(package)
    spec_path, model_dir = model_dir_of(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    if spec.WhichOneof("Type") != "mlProgram":
        raise ProgramError(f"{package}: holds a '{spec.WhichOneof('Type')}' model, not an ML program")
    functions = spec.mlProgram.functions
    if function not in functions:
        raise ProgramError(f"{package}: no function '{function}' (has {', '.join(functions)})")
    fn = functions[function]
    block = fn.block_specializations[fn.opset]
    weights = _Weights(model_dir)
    ops: list[Op] = []
    for o in block.operations:
        inputs = {
            k: [("name", a.name) if a.WhichOneof("binding") == "name" else ("value", _value(a.value, weights))
                for a in arg.arguments]
            for k, arg in o.inputs.items()
        }
        attrs = {k: _value(v, weights) for k, v in o.attributes.items()}
        name = attrs.get("name") or (o.outputs[0].name if o.outputs else o.type)
        outs = [(out.name, _tensor_type(out.type)) for out in o.outputs]
        ops.append(Op(o.type, str(name), inputs, attrs, outs, has_blocks=len(o.blocks) > 0))
    meta = dict(spec.description.metadata.userDefined)
    return Program(package, fn.opset, [(i.name, _tensor_type(i.type)) for i in fn.inputs],
                   list(block.outputs), ops, meta, spec.specificationVersion)
