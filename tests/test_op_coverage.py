"""Every op family of mobile networks and small transformers, int8 in every format.

Two tiny models hold one branch per op family (image ops on [B, 4, 8, 8], sequence ops on
[B, 8, 16]). Each is QAT-prepared with edgeforge's quantizer, calibrated, trained a few steps,
converted, saved and reloaded as the pipeline does, then exported once per format and run in that
format's runtime. The branches' int8 outputs are dequantized and concatenated by a ``combine``
module kept float, so one artifact output holds every op's own quantized output: each op is held
to the QAT simulation within 1 LSB of its output scale, and to the int8 kernel its format runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeforge.carrier import Carrier
from edgeforge.exporters import get_exporter
from edgeforge.quant.qat import export_for_training, load_carrier, save_carrier
from edgeforge.quant.quantizer import Int8Quantizer
from edgeforge.runtimes import get_runtime
from edgeforge.targets import TargetProfile

LSB = 1.0 + 1e-3  # one quantization step, plus float rounding of the dequantized value


class Combine(nn.Module):
    """Kept float by the quantizer: flattens and concatenates the branches' dequantized outputs."""

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)


class At(nn.Module):
    """Runs one branch's op under the module path ``at.<op>``, which LiteRT's tensor names keep."""

    def forward(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        return fn(*args)


def _tags(names: list[str]) -> nn.ModuleDict:
    return nn.ModuleDict({n: At() for n in names})


IMAGE_OPS = ["conv", "depthwise_conv", "grouped_conv", "hardswish", "hardsigmoid", "sigmoid", "silu", "se_multiply",
             "concat", "upsample_nearest", "upsample_bilinear", "adaptive_avg_pool", "mean", "clamp", "relu6", "gelu"]
SEQUENCE_OPS = ["softmax", "layer_norm", "matmul", "bmm", "linear"]


class ImageOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # The branches read an int8 activation, as inside a network, through an exact op (max of
        # int8 values, same scale): a requantizing stem would be off by 1 LSB in some formats and
        # that LSB grows at every branch whose output scale is finer than its input's.
        self.stem = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)  # channels != 8 = H = W: NHWC is told apart
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.se_fc = nn.Conv2d(4, 4, 1)
        self.cat_conv = nn.Conv2d(4, 2, 1)
        self.at = _tags(IMAGE_OPS)
        self.combine = Combine()

    def parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, at = self.stem(x), self.at
        gate = F.hardsigmoid(self.se_fc(h.mean((2, 3), keepdim=True)))
        ops: dict[str, tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = {
            "conv": (self.conv, (h,)), "depthwise_conv": (self.depthwise, (h,)), "grouped_conv": (self.grouped, (h,)),
            "hardswish": (F.hardswish, (h,)), "hardsigmoid": (F.hardsigmoid, (h,)), "sigmoid": (torch.sigmoid, (h,)),
            "silu": (F.silu, (h,)), "se_multiply": (torch.mul, (h, gate)),
            "concat": (lambda a, b: torch.cat([a, b], 1), (h, self.cat_conv(h))),
            "upsample_nearest": (lambda a: F.interpolate(a, scale_factor=2, mode="nearest"), (h,)),
            "upsample_bilinear": (lambda a: F.interpolate(a, scale_factor=2, mode="bilinear"), (h,)),
            "adaptive_avg_pool": (lambda a: F.adaptive_avg_pool2d(a, 1), (h,)),
            "mean": (lambda a: a.mean((2, 3)), (h,)), "clamp": (lambda a: torch.clamp(a, -1.0, 1.0), (h,)),
            "relu6": (F.relu6, (h,)), "gelu": (F.gelu, (h,)),
        }
        return {name: at[name](fn, *args) for name, (fn, args) in ops.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(list(self.parts(x).values()))


class SequenceOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 8)
        self.at = _tags(SEQUENCE_OPS)
        self.combine = Combine()

    def parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t, at = x.reshape(x.shape[0], 8, 16), self.at
        return {
            "softmax": at["softmax"](lambda a: F.softmax(a, -1), t),
            "layer_norm": at["layer_norm"](self.norm, t),
            "matmul": at["matmul"](lambda a: a @ a.transpose(1, 2), t),
            "bmm": at["bmm"](lambda a: torch.bmm(a.transpose(1, 2), a), t),
            "linear": at["linear"](self.proj, t),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(list(self.parts(x).values()))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[str]]] = {
    "image": (ImageOps, (4, 8, 8), IMAGE_OPS),
    "sequence": (SequenceOps, (1, 8, 16), SEQUENCE_OPS),
}
OPS = [(m, op) for m, (_, _, ops) in MODELS.items() for op in ops]
FORMATS = ["onnx", "tflite", "coreml", "executorch"]
NEEDS = {"onnx": "onnxruntime", "tflite": "litert_torch", "coreml": "coremltools", "executorch": "executorch"}
BATCH = 4
LSB = 1.0 + 1e-3  # one quantization step, plus float rounding of the dequantized value
FP16 = 2.0**-10  # Core ML int8 programs compute (and return) fp16 between their quantize ops


def _qat(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...],
         exported: torch.fx.GraphModule | None = None) -> torch.fx.GraphModule:
    """Prepare with edgeforge's quantizer, initialise ranges on x, train 3 LSQ steps, convert.

    ``x`` is one batch or a tuple of input batches; a multi-input model comes already ``exported``.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from edgeforge.quant.qat import _set_fake_quant

    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        target = model(*xs)
    gm = exported if exported is not None else export_for_training(model, xs[0])
    prepared = prepare_qat_pt2e(gm, Int8Quantizer(float_modules=("combine",)))
    move_exported_model_to_eval(prepared)
    _set_fake_quant(prepared, observe=True, quantize=False, learn=False)
    prepared(*xs)
    _set_fake_quant(prepared, observe=False, quantize=True, learn=True)
    move_exported_model_to_train(prepared)
    opt = torch.optim.Adam(prepared.parameters(), 1e-3)
    for _ in range(3):
        loss = F.mse_loss(prepared(*xs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    move_exported_model_to_eval(prepared)
    _set_fake_quant(prepared, observe=False, quantize=True, learn=False)
    return convert_pt2e(prepared)


_DEQUANTIZE = ("dequantize_per_tensor.default", "dequantize_per_tensor.tensor")


def _branch_scales(gm: torch.fx.GraphModule) -> list[float]:
    """The output scale of each branch: the dequantize feeding each input of the final concat."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    cat = out.args[0][0] if isinstance(out.args[0], (list, tuple)) else out.args[0]
    scales = []
    for node in cat.args[0]:
        while not str(node.target).endswith(_DEQUANTIZE):
            node = node.args[0]
        scales.append(float(node.args[1]))
    return scales


def _on_input_grid(gm: torch.fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    """x rounded to the carrier's input quantization, so every format starts from the same int8 input."""
    q = next(n for n in gm.graph.nodes if n.op == "call_function" and str(n.target).endswith("quantize_per_tensor.default")
             and getattr(n.args[0], "op", "") == "placeholder")
    scale, zp = float(q.args[1]), int(q.args[2])
    return (torch.clamp(torch.round(x / scale) + zp, -128, 127) - zp) * scale


def _litert_branches(path: Path, x: np.ndarray, model: nn.Module, shapes: dict[str, tuple[int, ...]],
                     scales: dict[str, float]) -> dict[str, np.ndarray]:
    """Each branch's int8 output as the LiteRT interpreter computed it, read from the tensor its op wrote.

    litert-torch re-quantizes the float ``combine`` head (one scale for all branches), so the file's
    own output cannot show per-op results; the op's output tensor, named by its module, can.
    """
    from ai_edge_litert.interpreter import Interpreter

    from edgeforge.exporters.tflite_ops import module_path

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    known = {n for n, _ in model.named_modules() if n}
    details = {d["index"]: d for d in it.get_tensor_details()}
    last: dict[str, int] = {}
    for op in it._get_ops_details():
        for t in op["outputs"]:
            where = (module_path(details[t]["name"], known) or "").removeprefix("at.")
            shape = tuple(int(d) for d in details[t]["shape"][1:])
            want = shapes.get(where, ())
            nhwc = (*want[1:], *want[:1]) if len(want) == 3 else want
            if details[t]["dtype"] == np.int8 and shape in (want, nhwc):
                last[where] = t  # the branch op's own output (NCHW or NHWC)
    for op, want in shapes.items():
        # LiteRT merges identical ops (adaptive_avg_pool(h, 1) and h.mean((2, 3))) and names the
        # second branch's requantization after no module, and folds the batch into a float island's
        # rows (layer norm): find those by element count and the carrier's scale.
        if op not in last:
            last[op] = max(t for t, d in details.items() if d["dtype"] == np.int8
                           and int(np.prod(d["shape"])) == BATCH * int(np.prod(want))
                           and abs(d["quantization"][0] - scales[op]) <= 1e-6 * scales[op])
    inp = it.get_input_details()[0]
    outs: dict[str, list[np.ndarray]] = {op: [] for op in shapes}
    for i in range(0, len(x), BATCH):
        it.set_tensor(inp["index"], x[i : i + BATCH])
        it.invoke()
        for op in shapes:
            d = details[last[op]]
            scale, zp = d["quantization"]
            q = it.get_tensor(last[op]).astype(np.float32)
            want = shapes[op]
            nhwc = len(want) == 3 and q.shape[1:] == (*want[1:], *want[:1])
            outs[op].append(((q - zp) * scale).reshape(BATCH, *(q.shape[1:] if nhwc else want)))
    return {op: np.concatenate(v) for op, v in outs.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], dict[str, Any]]:
    """Per model: the carrier and its QAT simulation; per (model, format): each op's artifact output."""
    cache: dict[Any, Any] = {}

    def carrier(name: str) -> dict[str, Any]:
        if name not in cache:
            torch.manual_seed(0)
            build, shape, ops = MODELS[name]
            model = build().eval()
            x = torch.randn(64, *shape) * 1.5
            path = tmp_path_factory.mktemp(name) / "qat.pt2"
            save_carrier(_qat(model, x), x, str(path))
            quantized = load_carrier(str(path))  # folded int8 weights, as the pipeline hands them on
            x_test = _on_input_grid(quantized, torch.randn(2 * BATCH, *shape) * 1.5)
            with torch.no_grad():
                shapes = {op: tuple(p.shape[1:]) for op, p in model.parts(x_test[:1]).items()}  # type: ignore[operator]
                simulation = quantized(x_test).numpy()
            bounds = np.cumsum([0, *(int(np.prod(s)) for s in shapes.values())])
            cache[name] = {
                "model": model, "ops": ops, "shapes": shapes, "x": x_test.numpy(), "simulation": simulation,
                "carrier": Carrier(model, quantized, shape, simulation.shape[1], [], x[:16], name=name),
                "slices": {op: slice(bounds[i], bounds[i + 1]) for i, op in enumerate(ops)},
                "scales": dict(zip(ops, _branch_scales(quantized))),
            }
        return cache[name]  # type: ignore[no-any-return]

    def artifact(name: str, fmt: str) -> dict[str, Any]:
        key = (name, fmt)
        if key not in cache:
            pytest.importorskip(NEEDS[fmt])
            try:
                cache[key] = build_artifact(name, fmt)
            except Exception as exc:  # once per (model, format), not once per op
                cache[key] = exc
        if isinstance(cache[key], Exception):
            raise cache[key]
        return cache[key]  # type: ignore[no-any-return]

    def build_artifact(name: str, fmt: str) -> dict[str, Any]:
        c = carrier(name)
        exporter = get_exporter(fmt)
        target = TargetProfile.model_validate({"name": f"{name}-{fmt}", "format": fmt, "precision": "int8",
                                               "input": {"batch": BATCH}})
        art = exporter.export(c["carrier"], target, tmp_path_factory.mktemp(f"{name}-{fmt}") / f"m{exporter.suffix}")
        if fmt == "tflite":
            per_op = _litert_branches(art.path, c["x"], c["model"], c["shapes"], c["scales"])
            # LiteRT keeps some 4-D tensors NHWC; the shapes are chosen so C never equals H or W.
            outputs = {op: (v if v.shape[1:] == c["shapes"][op] else v.transpose(0, 3, 1, 2)).reshape(len(v), -1)
                       for op, v in per_op.items()}
        else:
            out = get_runtime(fmt).open(art.path, target).run_all(c["x"])
            outputs = {op: out[:, sl] for op, sl in c["slices"].items()}
        return {**c, "info": art.info, "outputs": outputs, "path": art.path}

    return artifact


def _marks(fmt: str, op: str) -> list[Any]:
    marks = [getattr(pytest.mark, fmt)]
    if fmt == "executorch":  # its XNNPACK lowering takes ~50 s for these two models: kept out of the quick run
        marks.append(pytest.mark.slow)
    return marks


CASES = [pytest.param(m, op, fmt, marks=_marks(fmt, op)) for m, op in OPS for fmt in FORMATS]


@pytest.mark.parametrize("model_name,op,fmt", CASES)
def test_artifact_matches_qat_simulation_within_one_lsb(built: Any, fmt: str, model_name: str, op: str) -> None:
    r = built(model_name, fmt)
    sim, got, scale = r["simulation"][:, r["slices"][op]], r["outputs"][op], r["scales"][op]
    allowed = LSB * scale + (np.abs(sim) * FP16 if fmt == "coreml" else 0.0)
    excess = np.abs(got - sim) - allowed
    worst = int(np.argmax(excess))
    assert excess.flat[worst] <= 0, (
        f"{op} in {fmt}: |artifact - QAT simulation| = {abs(got.flat[worst] - sim.flat[worst]) / scale:.2f} LSB")


@pytest.mark.onnx
def test_onnxruntime_runs_pools_and_hardsigmoid_in_int8(built: Any) -> None:
    """The exporter writes mean((2, 3)) as GlobalAveragePool and hardsigmoid's +3 and x1/6 as int8
    constants: onnxruntime has int8 kernels for those (QLinearGlobalAveragePool, QLinearAdd/Mul),
    not for ReduceMean or an Add/Mul with a float constant."""
    from edgeforge.runtimes.onnxruntime import optimized_ops

    r = built("image", "onnx")
    assert r["info"]["global_average_pools"] >= 2  # the SE mean (keepdim) and the head-style mean
    assert r["info"]["quantized_scalars"] >= 4  # +3 and x1/6 of both hardsigmoids
    ops = optimized_ops(r["path"])
    assert ops.get("QLinearGlobalAveragePool", 0) >= 2 and "ReduceMean" not in ops, ops
    assert ops.get("QLinearAdd", 0) >= 2 and ops.get("QLinearMul", 0) >= 4, ops


def test_litert_tensor_names_resolve_to_module_paths() -> None:
    from edgeforge.exporters.tflite_ops import module_path

    known = {"features", "features.1", "features.1.se", "features.1.se.gate", "conv", "at", "at.conv", "at.mul"}
    gate = ("pkg.MobileNet/torch.nn.modules.container.Sequential_features/pkg.InvertedResidual_1/"
            "pkg.SqueezeExcite_se/torch.nn.modules.activation.Hardsigmoid_gate;;pkg.MobileNet/x;")
    assert module_path(gate, known) == "features.1.se.gate"
    # ModuleDict entries appear without their container; class names may hold "_".
    assert module_path("t.ImageOps/t.At_conv/torch.nn.modules.conv.Conv2d_conv;2", known) == "at.conv"
    assert module_path("t.ImageOps/t._Private_Tag_mul;1", known) == "at.mul"
    assert module_path("t.ImageOps;1", known) is None  # an op written in the root's forward


# The LiteRT int8 kernel each family lowers to (op_families.FAMILIES says the same in prose).
TFLITE_KERNELS = {
    "conv": "CONV_2D", "depthwise_conv": "DEPTHWISE_CONV_2D", "grouped_conv": "CONV_2D", "hardswish": "HARD_SWISH",
    "hardsigmoid": "ADD", "sigmoid": "LOGISTIC", "silu": "LOGISTIC", "se_multiply": "MUL",
    "concat": "CONCATENATION", "upsample_nearest": "RESIZE_NEAREST_NEIGHBOR", "upsample_bilinear": "RESIZE_BILINEAR",
    "adaptive_avg_pool": "MEAN", "mean": "MEAN", "clamp": "RELU_N1_TO_1", "relu6": "RELU6", "gelu": "GELU",
    "softmax": "SOFTMAX", "matmul": "BATCH_MATMUL", "bmm": "BATCH_MATMUL", "linear": "FULLY_CONNECTED",
}
FLOAT_IN_TFLITE = {"layer_norm"}  # no int8 layer-norm builtin: litert-torch lowers it to a float island


@pytest.mark.tflite
@pytest.mark.parametrize("model_name", list(MODELS))
def test_tflite_runs_each_family_on_an_int8_kernel_and_names_float_ops(built: Any, model_name: str) -> None:
    r = built(model_name, "tflite")
    ops = r["info"]["ops"]
    for op in r["ops"]:
        if op in FLOAT_IN_TFLITE:
            continue
        kernel = TFLITE_KERNELS[op]
        assert kernel in ops and any(set(sig.replace(" -> ", ",").split(",")) <= {"int8", "int32"}
                                     for sig in ops[kernel]["types"]), f"{op}: {kernel} not int8 in {ops.get(kernel)}"
    # Float ops are reported by module and PyTorch op; none may come from a branch with an int8 kernel.
    float_ops = r["info"]["float_ops"]
    assert all({"op", "module", "torch_op", "dtype"} <= set(o) for o in float_ops)
    stray = [o for o in float_ops if o["module"].startswith("at.") and o["module"][3:] not in FLOAT_IN_TFLITE]
    assert stray == []
    if model_name == "sequence":
        assert any(o["module"] == "at.layer_norm" for o in float_ops), float_ops
