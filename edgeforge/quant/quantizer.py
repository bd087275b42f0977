"""An int8 PT2E quantizer: per-channel symmetric weights, per-tensor affine activations.

This is the scheme XNNPACK, LiteRT, onnxruntime's QDQ kernels and Core ML's W8A8 programs all
accept, so one annotated graph (the *carrier*) feeds every exporter. Activations use int8 in
[-128, 127] (not uint8) because TFLite deprecated uint8 activations; weights use [-127, 127] so
the symmetric range has no lone -128 that some int8 GEMM kernels reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

aten = torch.ops.aten

_WEIGHTED = {aten.conv1d.default, aten.conv2d.default, aten.linear.default}
_BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_ACTIVATIONS = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
_BINARY = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor}
# Ops whose output lies in the range of their input: they share its quantization parameters,
# so the exported graph has no requantization around them.
_SAME_RANGE = {
    aten.max_pool2d.default,
    aten.flatten.using_ints,
    aten.view.default,
    aten.reshape.default,
    aten.dropout.default,
    aten.permute.default,
}
# Ops that change the range and get their own output quantization.
_OWN_RANGE = {aten.adaptive_avg_pool2d.default, aten.mean.dim, aten.avg_pool2d.default}

ANNOTATION_KEY = "quantization_annotation"


@dataclass(frozen=True)
class Int8Scheme:
    """How ranges are observed and whether their scales are learned during QAT."""

    learn_activation_ranges: bool = True
    range_init: str = "minmax"  # minmax | histogram

    def activation_spec(self) -> QuantizationSpec:
        observer: Any = HistogramObserver if self.range_init == "histogram" else MovingAverageMinMaxObserver
        kwargs: dict[str, Any] = {}
        if self.range_init != "histogram":
            kwargs["averaging_constant"] = 0.01
        ctr = _fake_quant(observer, -128, 127, self.learn_activation_ranges, torch.per_tensor_affine, **kwargs)
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_affine,
            is_dynamic=False,
            observer_or_fake_quant_ctr=ctr,
        )

    def weight_spec(self) -> QuantizationSpec:
        # Weight scales follow the weights' per-channel min/max: learned (LSQ) weight scales
        # collapsed to eps within tens of steps in our probes, while activation scales learn well.
        ctr = _fake_quant(PerChannelMinMaxObserver, -127, 127, False, torch.per_channel_symmetric, ch_axis=0)
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
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


def _is_float_tensor(arg: Any) -> bool:
    if not isinstance(arg, Node):
        return False
    val = arg.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


class Int8Quantizer(Quantizer):
    """Annotates conv/linear (+BN)(+ReLU), add/mul, pooling and reshapes of an exported graph."""

    def __init__(self, scheme: Int8Scheme | None = None) -> None:
        super().__init__()
        self.scheme = scheme or Int8Scheme()

    def annotate(self, model: GraphModule) -> GraphModule:
        act = self.scheme.activation_spec()
        weight = self.scheme.weight_spec()
        for node in model.graph.nodes:
            if node.op != "call_function" or _is_annotated(node):
                continue
            if node.target in _WEIGHTED:
                self._annotate_weighted(node, act, weight)
            elif node.target in _BINARY:
                self._annotate_binary(node, act)
        # Second pass: ops that follow quantized producers.
        for node in model.graph.nodes:
            if node.op != "call_function" or _is_annotated(node):
                continue
            src = node.args[0] if node.args else None
            if not isinstance(src, Node) or not _is_float_tensor(src):
                continue
            if node.target in _SAME_RANGE and _is_annotated(src):
                _mark(node, {src: act}, SharedQuantizationSpec((src, node)))
            elif node.target in _OWN_RANGE:
                _mark(node, {src: act}, act)
        return model

    def _annotate_weighted(self, node: Node, act: QuantizationSpec, weight: QuantizationSpec) -> None:
        x, w = node.args[0], node.args[1]
        if not isinstance(x, Node) or not isinstance(w, Node):
            return
        chain = [node]
        bn = _only_user(node, _BATCH_NORM)
        if bn is not None:
            chain.append(bn)
        relu = _only_user(chain[-1], _ACTIVATIONS)
        if relu is not None:
            chain.append(relu)
        # Bias stays float here: exporters store it as int32 with scale s_x * s_w.
        _mark(node, {x: act, w: weight}, None if len(chain) > 1 else act)
        for inner in chain[1:-1]:
            _mark(inner)
        if len(chain) > 1:
            _mark(chain[-1], None, act)

    def _annotate_binary(self, node: Node, act: QuantizationSpec) -> None:
        inputs: dict[Node, Any] = {a: act for a in node.args[:2] if isinstance(a, Node) and _is_float_tensor(a)}
        if len(inputs) != 2:
            return
        relu = _only_user(node, _ACTIVATIONS)
        if relu is None:
            _mark(node, inputs, act)
        else:
            _mark(node, inputs, None)
            _mark(relu, None, act)

    def validate(self, model: GraphModule) -> None:
        pass


