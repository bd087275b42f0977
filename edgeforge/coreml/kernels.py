"""numpy kernels for MIL ops, registered by op name.

Semantics follow the MIL op reference (coremltools.converters.mil.mil.ops.defs). Kernels compute
in float32 (float64 would hide nothing we check); the interpreter then casts every output to the
dtype the program declares, which is how fp16 programs round between ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Args:
    """An op's inputs and attributes by parameter name."""

    def __init__(self, values: dict[str, list[Any]]) -> None:
        self._v = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._v[name][0]
        except KeyError:
            raise KeyError(f"missing input '{name}'") from None

    def get(self, name: str, default: Any = None) -> Any:
        vals = self._v.get(name)
        return vals[0] if vals else default

    def list(self, name: str) -> list[Any]:
        return list(self._v.get(name, []))

    def f(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name), dtype=np.float32)


Kernel = Callable[[Args], Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    def deco(fn: Kernel) -> Kernel:
        for n in names:
            KERNELS[n] = fn
        return fn

    return deco


def _ints(v: Any) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


# ---- constants and casts -------------------------------------------------------------------------

@kernel("const")
def _const(a: Args) -> Any:
    return a.val


_CAST = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
         "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


@kernel("cast")
def _cast(a: Args) -> np.ndarray:
    return np.asarray(a.x).astype(_CAST[a.dtype])


@kernel("identity")
def _identity(a: Args) -> np.ndarray:
    return np.asarray(a.x)


# ---- quantization ----------------------------------------------------------------------------------

def _along(v: Any, rank: int, axis: int | None) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1 and rank > 1 and axis is not None:
        shape = [1] * rank
        shape[axis] = v.size
        return v.reshape(shape)
    return v


@kernel("quantize")
def _quantize(a: Args) -> np.ndarray:
    x = a.f("input")
    axis = a.get("axis")
    axis = None if axis is None else int(axis) % x.ndim
    dt = np.int8 if a.output_dtype == "int8" else np.uint8
    zp = _along(a.get("zero_point", 0), x.ndim, axis)
    info = np.iinfo(dt)
    # Round half to even, as torch.round in PT2E's quantize_per_tensor does.
    return np.clip(np.rint(x / _along(a.scale, x.ndim, axis)) + zp, info.min, info.max).astype(dt)


@kernel("dequantize")
def _dequantize(a: Args) -> np.ndarray:
    x = np.asarray(a.input, dtype=np.float32)
    axis = a.get("axis")
    axis = None if axis is None else int(axis) % x.ndim
    return (x - _along(a.get("zero_point", 0), x.ndim, axis)) * _along(a.scale, x.ndim, axis)


@kernel("constexpr_affine_dequantize")
def _affine_dequantize(a: Args) -> np.ndarray:
    q = np.asarray(a.quantized_data, dtype=np.float32)
    axis = int(a.axis) % q.ndim
    return (q - _along(a.zero_point, q.ndim, axis)) * _along(a.scale, q.ndim, axis)


def _blockwise(v: Any, shape: tuple[int, ...]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    for axis, (n, m) in enumerate(zip(shape, v.shape)):
        if m != n:
            v = np.repeat(v, n // m, axis=axis)
    return v


@kernel("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(a: Args) -> np.ndarray:
    data = np.asarray(a.data, dtype=np.float32)
    offset = a.get("offset")
    if offset is not None:
        data = data - _blockwise(offset, data.shape)
    return data * _blockwise(a.scale, data.shape)


def _unpack_lsb_first(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """``count`` nbits-wide unsigned fields from bytes filled LSB first; a field may straddle two bytes
    (its low bits in the high bits of one byte, the rest in the low bits of the next)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8).reshape(-1), bitorder="little")
    if bits.size < count * nbits:
        raise ValueError(f"{packed.size} bytes hold fewer than {count} {nbits}-bit indices")
    fields = bits[: count * nbits].reshape(count, nbits).astype(np.int64)
    return fields @ (np.int64(1) << np.arange(nbits, dtype=np.int64))


@kernel("constexpr_lut_to_dense")
def _lut_to_dense(a: Args) -> np.ndarray:
    lut = np.asarray(a.lut)
    shape = a.get("shape")
    if shape is not None:
        # iOS16: indices uint8[M] holding ceil(nbits * prod(shape) / 8) bytes of packed indices, lut [2^nbits].
        shape = _ints(shape)
        nbits = int(lut.size).bit_length() - 1
        if lut.ndim != 1 or lut.size != 1 << nbits or nbits not in (1, 2, 4, 6, 8):
            raise ValueError(f"lut of shape {lut.shape}: expected 2, 4, 16, 64 or 256 entries")
        count = int(np.prod(shape)) if shape else 1
        return lut[_unpack_lsb_first(a.indices, nbits, count)].reshape(shape)
    # iOS18: indices uint{1,2,3,4,6,8} in the (pre-vector) output shape, already unpacked by the blob
    # reader; lut [*groups, 2^nbits, VECTOR_SIZE], groups[i] dividing indices.shape[i] into equal blocks.
    idx = np.asarray(a.indices).astype(np.int64)
    k = idx.ndim
    if lut.ndim != k + 2:
        raise ValueError(f"lut of rank {lut.ndim} for indices of rank {k}: expected rank {k + 2}")
    if idx.size and int(idx.max()) >= lut.shape[-2]:
        raise ValueError(f"index {int(idx.max())} beyond the {lut.shape[-2]}-entry lut")
    group = []
    for axis, (n, g) in enumerate(zip(idx.shape, lut.shape[:k])):
        if n % g:
            raise ValueError(f"indices dim {axis} ({n}) is not a multiple of the lut's {g} groups")
        view = [1] * k
        view[axis] = n
        group.append((np.arange(n) // (n // g)).reshape(view))
    out = lut[(*group, idx)]  # *indices.shape, VECTOR_SIZE
    vector = lut.shape[-1]
    if vector == 1:
        return out[..., 0]
    axis = int(a.vector_axis) % k
    # Each index expands to VECTOR_SIZE consecutive elements along vector_axis.
    shape = list(idx.shape)
    shape[axis] *= vector
    return np.moveaxis(out, -1, axis + 1).reshape(shape)


# ---- elementwise -----------------------------------------------------------------------------------

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "maximum": np.maximum,
    "minimum": np.minimum, "pow": np.power, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "less": np.less, "less_equal": np.less_equal,
}


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    def k(a: Args) -> np.ndarray:
        x, y = np.asarray(a.x), np.asarray(a.y)
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            x, y = x.astype(np.float32), y.astype(np.float32)
        return fn(x, y)

    return k


for _name, _fn in _BINARY.items():
    KERNELS[_name] = _binary(_fn)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + exp(-x))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32)


def _gelu(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    return 0.5 * x * (1 + _erf(x / np.sqrt(2.0)))


_UNARY: dict[str, Callable[[np.ndarray, Args], np.ndarray]] = {
    "relu": lambda x, a: np.maximum(x, 0),
    "relu6": lambda x, a: np.clip(x, 0, 6),
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: np.tanh(x),
    "silu": lambda x, a: x * _sigmoid(x),
    "gelu": lambda x, a: _gelu(x, a.get("mode", "EXACT")),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * np.float32(a.get("alpha", 0.01))),
    "elu": lambda x, a: np.where(x > 0, x, np.float32(a.get("alpha", 1.0)) * np.expm1(np.minimum(x, 0))),
    "softplus": lambda x, a: np.logaddexp(0, x),
    "clip": lambda x, a: np.clip(x, np.float32(a.alpha), np.float32(a.beta)),
    "sigmoid_hard": lambda x, a: np.clip(np.float32(a.get("alpha", 0.2)) * x + np.float32(a.get("beta", 0.5)), 0, 1),
    "thresholded_relu": lambda x, a: np.where(x > np.float32(a.get("alpha", 1.0)), x, 0),
    "abs": lambda x, a: np.abs(x),
    "exp": lambda x, a: np.exp(x),
    "log": lambda x, a: np.log(x + np.float32(a.get("epsilon", 0.0))),
    "sqrt": lambda x, a: np.sqrt(x),
    "rsqrt": lambda x, a: 1.0 / np.sqrt(x + np.float32(a.get("epsilon", 1e-12))),
    "square": lambda x, a: x * x,
    "inverse": lambda x, a: 1.0 / (x + np.float32(a.get("epsilon", 1e-4))),
    "floor": lambda x, a: np.floor(x),
    "ceil": lambda x, a: np.ceil(x),
    "round": lambda x, a: np.rint(x),
    "sign": lambda x, a: np.sign(x),
    "erf": lambda x, a: _erf(x),
}


def _unary(fn: Callable[[np.ndarray, Args], np.ndarray]) -> Kernel:
    return lambda a: fn(a.f("x"), a)


for _name, _ufn in _UNARY.items():
    KERNELS[_name] = _unary(_ufn)


@kernel("prelu")
def _prelu(a: Args) -> np.ndarray:
    x = a.f("x")
    alpha = _along(a.alpha, x.ndim, 1 if x.ndim > 1 else None)
    return np.where(x >= 0, x, x * alpha)


@kernel("softmax")
def _softmax(a: Args) -> np.ndarray:
    x = a.f("x")
    axis = int(a.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- linear algebra and convolution ----------------------------------------------------------------

@kernel("linear")
def _linear(a: Args) -> np.ndarray:
    y = a.f("x") @ a.f("weight").T
    bias = a.get("bias")
    return y if bias is None else y + np.asarray(bias, dtype=np.float32)


@kernel("matmul")
def _matmul(a: Args) -> np.ndarray:
    x, y = a.f("x"), a.f("y")
    if a.get("transpose_x", False) and x.ndim > 1:
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y", False) and y.ndim > 1:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _pads(a: Args, spatial: tuple[int, ...], kernel_size: list[int], strides: list[int],
          dilations: list[int]) -> list[tuple[int, int]]:
    """(before, after) per spatial dim for pad_type valid / custom / same / same_lower."""
    pad_type = a.get("pad_type", "valid")
    n = len(spatial)
    if pad_type == "custom":
        p = _ints(a.get("pad", [0] * 2 * n))
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(spatial, kernel_size, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            out.append((small, total - small) if pad_type == "same" else (total - small, small))
        return out
    return [(0, 0)] * n


def _windows(x: np.ndarray, kernel_size: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """View (N, C, *out, *kernel) of an already padded (N, C, *spatial) array."""
    n = len(kernel_size)
    span = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilations)]
    w = sliding_window_view(x, span, axis=tuple(range(2, 2 + n)))
    idx = (slice(None), slice(None), *[slice(None, None, s) for s in strides],
           *[slice(None, None, d) for d in dilations])
    return w[idx]


@kernel("conv")
def _conv(a: Args) -> np.ndarray:
    x, w = a.f("x"), a.f("weight")
    n = x.ndim - 2
    ks = list(w.shape[2:])
    strides = _ints(a.get("strides", [1] * n))
    dilations = _ints(a.get("dilations", [1] * n))
    groups = int(a.get("groups", 1))
    pads = _pads(a, x.shape[2:], ks, strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    win = _windows(xp, ks, strides, dilations)  # N, C, *out, *k
    batch, cin = x.shape[:2]
    cout = w.shape[0]
    out_shape = win.shape[2:2 + n]
    win = win.reshape(batch, groups, cin // groups, *out_shape, *ks)
    wg = w.reshape(groups, cout // groups, cin // groups, *ks)
    sp, kk = "hwd"[:n], "ijk"[:n]
    y = np.einsum(f"ngc{sp}{kk},goc{kk}->ngo{sp}", win, wg, optimize=True)
    y = y.reshape(batch, cout, *out_shape)
    bias = a.get("bias")
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32).reshape(cout, *([1] * n))
    return y


def _pool(a: Args, reduce: str) -> np.ndarray:
    x = a.f("x")
    n = x.ndim - 2
    ks = _ints(a.kernel_sizes)
    strides = _ints(a.get("strides", [1] * n))
    ones = [1] * n
    pads = _pads(a, x.shape[2:], ks, strides, ones)
    if a.get("ceil_mode", False):
        # Extra trailing padding so the last partial window exists, unless it would start in the padding.
        grown = []
        for size, k, s, (lo, hi) in zip(x.shape[2:], ks, strides, pads):
            out = math.ceil((size + lo + hi - k) / s) + 1
            if (out - 1) * s >= size + lo:
                out -= 1
            grown.append((lo, max(hi, (out - 1) * s + k - size - lo)))
        pads_ext = grown
    else:
        pads_ext = pads
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0), *pads_ext], constant_values=fill)
    win = _windows(xp, ks, strides, ones)
    axes = tuple(range(2 + n, 2 + 2 * n))
    if reduce == "max":
        return win.max(axis=axes)
    total = win.sum(axis=axes)
    # Divisor: window cells inside the input (exclude padding) or inside input + declared padding.
    exclude = bool(a.get("exclude_padding_from_average", False))
    mask = np.zeros(xp.shape[2:], dtype=np.float32)
    inner = tuple(slice(lo, lo + size) if exclude else slice(0, lo + size + hi)
                  for size, (lo, hi) in zip(x.shape[2:], pads))
    mask[inner] = 1.0
    counts = _windows(mask[None, None], ks, strides, ones).sum(axis=axes)
    return total / np.maximum(counts, 1.0)


@kernel("max_pool")
def _max_pool(a: Args) -> np.ndarray:
    return _pool(a, "max")


@kernel("avg_pool")
def _avg_pool(a: Args) -> np.ndarray:
    return _pool(a, "avg")


@kernel("batch_norm")
def _batch_norm(a: Args) -> np.ndarray:
    x = a.f("x")
    c = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - a.f("mean").reshape(c)) / np.sqrt(a.f("variance").reshape(c) + np.float32(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        y = y * a.f("gamma").reshape(c)
    if a.get("beta") is not None:
        y = y + a.f("beta").reshape(c)
    return y


@kernel("layer_norm")
def _layer_norm(a: Args) -> np.ndarray:
    x = a.f("x")
    axes = tuple(_ints(a.get("axes", [-1])))
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + np.float32(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        y = y * a.f("gamma")
    if a.get("beta") is not None:
        y = y + a.f("beta")
    return y


# ---- reductions ------------------------------------------------------------------------------------

_REDUCE = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
           "reduce_prod": np.prod}


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    def k(a: Args) -> np.ndarray:
        axes = a.get("axes")
        axis = None if axes is None else tuple(_ints(axes))
        return fn(a.f("x"), axis=axis, keepdims=bool(a.get("keep_dims", False)))

    return k


for _name, _rfn in _REDUCE.items():
    KERNELS[_name] = _reduce(_rfn)  # type: ignore[arg-type]


# ---- shapes ----------------------------------------------------------------------------------------

@kernel("reshape")
def _reshape(a: Args) -> np.ndarray:
    x = np.asarray(a.x)
    shape = _ints(a.shape)
    if len(shape) == x.ndim:  # then 0 means: keep the input's dim
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@kernel("transpose")
def _transpose(a: Args) -> np.ndarray:
    return np.transpose(np.asarray(a.x), _ints(a.perm))


@kernel("squeeze")
def _squeeze(a: Args) -> np.ndarray:
    axes = a.get("axes")
    x = np.asarray(a.x)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(_ints(axes)))


@kernel("expand_dims")
def _expand_dims(a: Args) -> np.ndarray:
    return np.expand_dims(np.asarray(a.x), tuple(_ints(a.axes)))


@kernel("concat")
def _concat(a: Args) -> np.ndarray:
    values = [np.asarray(v) for v in a.list("values")]
    axis = int(a.axis)
    if a.get("interleave", False):
        # Interleave: take one slice of each input along axis, in turn.
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@kernel("slice_by_index")
def _slice_by_index(a: Args) -> np.ndarray:
    x = np.asarray(a.x)
    r = x.ndim
    begin, end = _ints(a.begin), _ints(a.end)
    stride = _ints(a.get("stride", [1] * r))
    bm = [bool(v) for v in np.asarray(a.get("begin_mask", [False] * r)).reshape(-1)]
    em = [bool(v) for v in np.asarray(a.get("end_mask", [False] * r)).reshape(-1)]
    sq = [bool(v) for v in np.asarray(a.get("squeeze_mask", [False] * r)).reshape(-1)]
    idx: list[Any] = []
    for i in range(r):
        if sq[i]:
            idx.append(begin[i])
        else:
            idx.append(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]))
    return x[tuple(idx)]


@kernel("slice_by_size")
def _slice_by_size(a: Args) -> np.ndarray:
    x = np.asarray(a.x)
    idx = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(_ints(a.begin), _ints(a.size)))
    return x[idx]


@kernel("split")
def _split(a: Args) -> list[np.ndarray]:
    x = np.asarray(a.x)
    axis = int(a.axis)
    sizes = a.get("split_sizes")
    if sizes is not None:
        return np.split(x, np.cumsum(_ints(sizes))[:-1], axis=axis)
    return np.array_split(x, int(a.num_splits), axis=axis)


@kernel("pad")
def _pad(a: Args) -> np.ndarray:
    x = a.f("x")
    p = _ints(a.pad)
    pairs = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    mode = a.get("mode", "constant")
    if mode == "constant":
        return np.pad(x, pairs, constant_values=np.float32(a.get("constant_val", 0.0)))
    pad_mode: Any = {"reflect": "reflect", "replicate": "edge"}[mode]
    return np.pad(x, pairs, mode=pad_mode)


@kernel("tile")
def _tile(a: Args) -> np.ndarray:
    return np.tile(np.asarray(a.x), _ints(a.reps))


@kernel("shape")
def _shape(a: Args) -> np.ndarray:
    return np.array(np.asarray(a.x).shape, dtype=np.int32)


# ---- resampling ------------------------------------------------------------------------------------

def _source_index(out: int, size: int, scale: float, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Where each output row samples the input (MIL upsample_bilinear's three coordinate modes)."""
    i = np.arange(out, dtype=np.float64)
    if align_corners:
        return i * ((size - 1) / (out - 1)) if out > 1 else np.zeros(out)
    if half_pixel:
        return np.clip((i + 0.5) / scale - 0.5, 0, size - 1)
    return np.minimum(i / scale, size - 1)


def _lerp(x: np.ndarray, axis: int, src: np.ndarray) -> np.ndarray:
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    w = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


@kernel("upsample_bilinear")
def _upsample_bilinear(a: Args) -> np.ndarray:
    x = a.f("x")
    align = bool(a.get("align_corners", False))
    half = bool(a.get("half_pixel_centers", not align))
    for axis, key in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        s = float(a.get(key, 1.0))
        size = x.shape[axis]
        x = _lerp(x, x.ndim + axis, _source_index(int(math.floor(size * s)), size, s, align, half))
    return x


@kernel("upsample_nearest_neighbor")
def _upsample_nearest(a: Args) -> np.ndarray:
    x = np.asarray(a.x)
    for axis, key in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        s = float(a.get(key, 1))
        size = x.shape[axis]
        idx = np.minimum(np.floor(np.arange(int(math.floor(size * s))) / s).astype(np.int64), size - 1)
        x = np.take(x, idx, axis=x.ndim + axis)
    return x


@kernel("gather")
def _gather(a: Args) -> np.ndarray:
    x = np.asarray(a.x)
    idx = np.asarray(a.indices).astype(np.int64)
    axis = int(a.get("axis", 0))
    return np.take(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


@kernel("select")
def _select(a: Args) -> np.ndarray:
    """MIL select(cond, a, b): elementwise, broadcasting (coremltools wraps negative embedding ids with it)."""
    return np.where(np.asarray(a.cond).astype(bool), np.asarray(a.a), np.asarray(a.b))
