"""An int8 PT2E quantizer: per-channel symmetric weights, per-tensor affine activations.

This is the scheme XNNPACK, LiteRT, onnxruntime's QDQ kernels and Core ML's W8A8 programs all
accept, so one annotated graph (the *carrier*) feeds every exporter. Activations use int8 in
[-128, 127] (not uint8) because TFLite deprecated uint8 activations; weights use [-127, 127] so
the symmetric range has no lone -128 that some int8 GEMM kernels reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from .op_families import BATCH_NORM, FUSABLE_ACTIVATIONS, family_of

aten = torch.ops.aten

ANNOTATION_KEY = "quantization_annotation"


@dataclass(frozen=True)
class Int8Scheme:
    """How ranges are observed and whether their scales are learned during QAT."""

    learn_activation_ranges: bool = True
    range_init: str = "minmax"  # minmax | histogram
    weight_bits: int = 8  # 4: weights on the grid [-7, 7], still stored in int8 tensors by every format
    # hardswish as x * (relu6(x + 3) * 1/6), three int8 ops (ADD with RELU6, MUL, MUL). LiteRT 2.3's
    # XNNPACK delegate takes no int8 HARD_SWISH (the builtin kernel runs it, 7-27x the fp32 XNNPACK op
    # here, and splits the delegated graph around it) and onnxruntime's CPU EP has no int8 HardSwish
    # (a float island); both have int8 kernels for the parts. Off by default: a native int8
    # HARD_SWISH is one requantization instead of three, other delegates (GPU, NPU) take it, and on
    # MobileNetV3-Small at 96x96 in LiteRT the parts were no faster (README, "Is int8 faster here?").
    decompose_hardswish: bool = False

    @property
    def weight_qmax(self) -> int:
        return 2 ** (self.weight_bits - 1) - 1

    def activation_spec(self) -> QuantizationSpec:
        return self._per_tensor_affine(learned=self.learn_activation_ranges)

    def bounded_spec(self) -> QuantizationSpec:
        """The output of relu/relu6/clamp: observed ranges only, never learned.

        A learned (LSQ) range drifts a few LSB past the clamp (0..6.018 after relu6) and its zero
        point off -128; then onnxruntime cannot drop the Clip/Relu before the QuantizeLinear, and
        the convolution in front of it stays a float FusedConv between dequantize/quantize. An
        observed range never exceeds what the clamp lets through, so the clamp folds into the int8
        kernel in every format.
        """
        return self._per_tensor_affine(learned=False)

    def _per_tensor_affine(self, *, learned: bool) -> QuantizationSpec:
        observer: Any = HistogramObserver if self.range_init == "histogram" else MovingAverageMinMaxObserver
        kwargs: dict[str, Any] = {} if self.range_init == "histogram" else {"averaging_constant": 0.01}
        ctr = _fake_quant(observer, -128, 127, learned, torch.per_tensor_affine, **kwargs)
        return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                                is_dynamic=False, observer_or_fake_quant_ctr=ctr)

    def table_spec(self) -> QuantizationSpec:
        """Embedding tables: one symmetric int8 scale, since gathered rows keep the table's parameters."""
        from torchao.quantization.pt2e.observer import MinMaxObserver

        ctr = _fake_quant(MinMaxObserver, -127, 127, False, torch.per_tensor_symmetric)
        return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
                                is_dynamic=False, observer_or_fake_quant_ctr=ctr)

    def weight_spec(self) -> QuantizationSpec:
        # Weight scales follow the weights' per-channel min/max: learned (LSQ) weight scales
        # collapsed to eps within tens of steps in our probes, while activation scales learn well.
        q = self.weight_qmax
        ctr = _fake_quant(PerChannelMinMaxObserver, -q, q, False, torch.per_channel_symmetric, ch_axis=0)
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-q,
            quant_max=q,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            is_dynamic=False,
            observer_or_fake_quant_ctr=ctr,
        )


def _fake_quant(observer: Any, qmin: int, qmax: int, learnable: bool, qscheme: torch.qscheme, **kwargs: Any) -> Any:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize

    if learnable:
        # LSQ (Esser et al. 2020): scales receive gradients, normalised by sqrt(numel * qmax).
        return LearnableFakeQuantize.with_args(
            observer=observer, quant_min=qmin, quant_max=qmax, dtype=torch.int8, qscheme=qscheme,
            use_grad_scaling=True, **kwargs,
        )
    return FakeQuantize.with_args(
        observer=observer, quant_min=qmin, quant_max=qmax, dtype=torch.int8, qscheme=qscheme, **kwargs
    )


def _is_annotated(node: Node) -> bool:
    ann = node.meta.get(ANNOTATION_KEY)
    return bool(ann is not None and ann._annotated)


def _mark(node: Node, input_map: dict[Node, Any] | None = None, output: Any = None) -> None:
    node.meta[ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map=input_map or {}, output_qspec=output, _annotated=True
    )


def _only_user(node: Node, targets: set[Any]) -> Node | None:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and users[0].target in targets:
        return users[0]
    return None


def _is_float_tensor(arg: Any) -> TypeGuard[Node]:
    if not isinstance(arg, Node):
        return False
    val = arg.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _float_input(arg: Any) -> TypeGuard[Node]:
    """A float activation (not a parameter or buffer, which weighted ops quantize themselves)."""
    return _is_float_tensor(arg) and arg.op != "get_attr"


def _module_paths(node: Node) -> list[str]:
    return [str(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values()]


class Int8Quantizer(Quantizer):
    """Annotates an exported graph for int8 following the op families in ``op_families.FAMILIES``.

    ``float_modules`` keeps the ops of the named submodules (and their children) float, e.g. a head
    that must stay exact; their inputs are dequantized where they leave an int8 op.
    """

    def __init__(self, scheme: Int8Scheme | None = None, *, float_modules: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.scheme = scheme or Int8Scheme()
        self.float_modules = float_modules

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return decompose_for_int8(model, hardswish=self.scheme.decompose_hardswish)

    def annotate(self, model: GraphModule) -> GraphModule:
        act = self.scheme.activation_spec()
        bounded = self.scheme.bounded_spec()
        handlers = {
            "weighted": lambda n: self._annotate_weighted(n, act, bounded),
            "binary": lambda n: _annotate_binary(n, act, bounded),
            "own": lambda n: _annotate_unary(n, act, bounded if n.target in FUSABLE_ACTIVATIONS else act),
            "fixed": lambda n: _annotate_unary(n, act, _unit_interval_spec()),
            "matmul": lambda n: _annotate_matmul(n, act, bounded),
            "same": lambda n: _annotate_same(n, act),
            "concat": lambda n: _annotate_concat(n, act),
            "embedding": lambda n: _annotate_embedding(n, self.scheme.table_spec()),
        }
        # One pass in topological order: producers are annotated before the ops that share their range.
        for node in model.graph.nodes:
            if node.op != "call_function" or _is_annotated(node) or self._kept_float(node):
                continue
            family = family_of(node.target)
            if family is not None and family.how in handlers:
                handlers[family.how](node)
        return model

    def _kept_float(self, node: Node) -> bool:
        return any(p == m or p.startswith(m + ".") for p in _module_paths(node) for m in self.float_modules)

    def _annotate_weighted(self, node: Node, act: QuantizationSpec, bounded: QuantizationSpec) -> None:
        x, w = node.args[0], node.args[1]
        if not isinstance(x, Node) or not isinstance(w, Node):
            return
        chain = [node]
        bn = _only_user(node, BATCH_NORM)
        if bn is not None:
            chain.append(bn)
        relu = _only_user(chain[-1], FUSABLE_ACTIVATIONS)
        if relu is not None:
            chain.append(relu)
        # Bias stays float here: exporters store it as int32 with scale s_x * s_w.
        _mark(node, {x: act, w: self.scheme.weight_spec()}, None if len(chain) > 1 else act)
        for inner in chain[1:-1]:
            _mark(inner)
        if len(chain) > 1:
            _mark(chain[-1], None, bounded if relu is not None else act)

    def validate(self, model: GraphModule) -> None:
        pass


def _annotate_binary(node: Node, act: QuantizationSpec, bounded: QuantizationSpec) -> None:
    """add/mul/matmul: tensor operands int8; a scalar operand (hardsigmoid's +3, *1/6) stays a constant."""
    operands = node.args[:2]
    tensors = [a for a in operands if isinstance(a, Node)]
    if not tensors or not all(_is_float_tensor(a) for a in tensors):
        return
    if any(not isinstance(a, (Node, int, float)) for a in operands):
        return
    inputs: dict[Node, Any] = {a: act for a in tensors}
    relu = _only_user(node, FUSABLE_ACTIVATIONS)
    if relu is None:
        _mark(node, inputs, act)
    else:
        _mark(node, inputs, None)
        _mark(relu, None, bounded)


def _annotate_matmul(node: Node, act: QuantizationSpec, bounded: QuantizationSpec) -> None:
    """Like add/mul, but an operand with fixed parameters (softmax's probabilities) keeps them.

    A second observer on that edge would requantize the probabilities between the softmax and the
    matmul; LiteRT lowers a 4-D matmul through RESHAPEs, which must keep their input's scale, and
    rejected the file ("'tfl.reshape' op quantization parameters violate the same scale constraint").
    """
    _annotate_binary(node, act, bounded)
    ann = node.meta.get(ANNOTATION_KEY)
    if ann is None:
        return
    for arg in list(ann.input_qspec_map):
        producer = arg.meta.get(ANNOTATION_KEY)
        if producer is not None and isinstance(producer.output_qspec, FixedQParamsQuantizationSpec):
            ann.input_qspec_map[arg] = SharedQuantizationSpec(arg)


def _annotate_unary(node: Node, act: QuantizationSpec, out: Any) -> None:
    x = node.args[0] if node.args else None
    if _float_input(x):
        _mark(node, {x: act}, out)


def _annotate_same(node: Node, act: QuantizationSpec) -> None:
    # Only where the input is already int8 (or is the graph input): a reshape inside a float
    # region should not add quantize/dequantize pairs of its own.
    x = node.args[0] if node.args else None
    if _float_input(x) and (_is_annotated(x) or x.op == "placeholder"):
        _mark(node, {x: act}, SharedQuantizationSpec((x, node)))


def _annotate_concat(node: Node, act: QuantizationSpec) -> None:
    args = node.args[0]
    parts = [p for p in args if _float_input(p)] if isinstance(args, (list, tuple)) else []
    if not parts or len(parts) != len(args):  # type: ignore[arg-type]
        return
    first = parts[0]
    shared = SharedQuantizationSpec((first, node))
    inputs: dict[Node, Any] = {first: act}
    for p in parts[1:]:
        inputs.setdefault(p, shared)
    _mark(node, inputs, shared)


def _annotate_embedding(node: Node, table: QuantizationSpec) -> None:
    weight = node.args[0]
    if isinstance(weight, Node) and _is_float_tensor(weight):
        _mark(node, {weight: table}, SharedQuantizationSpec((weight, node)))


def _unit_interval_spec() -> FixedQParamsQuantizationSpec:
    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=1.0 / 256, zero_point=-128, quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


def decompose_for_int8(model: GraphModule, *, hardswish: bool = False) -> GraphModule:
    """Rewrite ops no format has one int8 kernel for into ops that each have one.

    hardsigmoid(x) -> relu6(x + 3) * (1/6) and silu(x) -> x * sigmoid(x): LiteRT lowers either as
    two float ops between one dequantize/quantize pair, which it then leaves float (the 9
    squeeze-excite gates of MobileNetV3-Small were 36 float ops). Annotated part by part, each part
    gets its own int8 kernel (ADD with fused RELU6, MUL, LOGISTIC) in every format. With
    ``hardswish``, hardswish(x) -> x * (relu6(x + 3) * (1/6)) too (see ``Int8Scheme.decompose_hardswish``).
    """
    names = {"hardsigmoid", "silu"} | ({"hardswish"} if hardswish else set())
    graph = model.graph
    changed = False
    for node in list(graph.nodes):
        family = family_of(node.target) if node.op == "call_function" else None
        if family is None or family.name not in names:
            continue
        with graph.inserting_before(node):
            out = _int8_parts(graph, node, family.name)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        model.recompile()
    return model


def _int8_parts(graph: Any, node: Node, name: str) -> Node:
    """The decomposition of ``node`` (hardsigmoid, silu or hardswish), inserted at the graph's cursor."""
    x = node.args[0]
    if name == "silu":
        gate = _like(graph.call_function(aten.sigmoid.default, (x,)), node, name)
        return _like(graph.call_function(aten.mul.Tensor, (x, gate)), node, name)
    shifted = _like(graph.call_function(aten.add.Tensor, (x, 3.0)), node, name)
    clipped = _like(graph.call_function(aten.hardtanh.default, (shifted, 0.0, 6.0)), node, name)
    out = _like(graph.call_function(aten.mul.Tensor, (clipped, 1.0 / 6.0)), node, name)
    if name == "hardswish":
        out = _like(graph.call_function(aten.mul.Tensor, (x, out)), node, name)
    return out


def _like(new: Node, old: Node, origin: str) -> Node:
    # Keep the shape, module path and source location, so reports still name the original op.
    new.meta.update({k: v for k, v in old.meta.items() if k != ANNOTATION_KEY})
    new.meta["edgeforge_decomposed_from"] = origin
    return new
