"""Which ops the int8 quantizer annotates, how, and which int8 kernel each format then runs.

One row per op family. ``how`` picks the annotation in ``quantizer.py``:

- ``weighted``: int8 per-channel weights, int8 input; BN and a following clamp-type activation fuse
  into the op, so the quantized output comes after them (one requantization, as the int8 kernels do);
- ``binary``: both tensor inputs int8 (a scalar operand stays a constant), own output range;
- ``own``: int8 input, own learned output range;
- ``same``: output shares the input's scale and zero-point (the op cannot leave the input's range,
  and the int8 kernels of TFLite's resize/pool/concat want equal scales);
- ``concat``: every input and the output share the first input's parameters;
- ``fixed``: output parameters fixed at scale 1/256, zero-point -128 ([0, 1) on 256 levels), which
  TFLite's int8 LOGISTIC and SOFTMAX kernels require;
- ``matmul``: both activation inputs int8, own output range;
- ``embedding``: int8 per-tensor table; the gathered rows share its parameters;
- ``decomposed``: rewritten before annotation into ops above so every part gets an int8 kernel.

``kernels`` says what each format runs for the family: TFLite as read from the converted files
(tests/test_op_coverage.py asserts it), onnxruntime from its optimised graph, Core ML from the
program (its runtime's int8 use cannot be observed on Linux), ExecuTorch from XNNPACK's quantized
operator list where marked unverified. "float" means the
format dequantizes, computes in float and requantizes: still correct to the carrier, but a float
island on an int8-only accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

aten = torch.ops.aten


@dataclass(frozen=True)
class OpFamily:
    name: str
    targets: tuple[Any, ...]
    how: str
    kernels: dict[str, str] = field(default_factory=dict)


def _k(onnx: str, tflite: str, coreml: str, executorch: str) -> dict[str, str]:
    return {"onnx": onnx, "tflite": tflite, "coreml": coreml, "executorch": executorch}


_CM_INT8 = "conv/linear/matmul with int8 weights (constexpr_affine_dequantize); int8-int8 compute on A17/M4 ANE"
_CM_FP16 = "fp16 between dequantize/quantize (Core ML quantizes activations at op boundaries only)"
# onnxruntime 1.32 (CPU EP) fuses only some QDQ patterns into int8 kernels (QLinearConv, QGemm,
# QLinearSigmoid seen); the rest run in float between DequantizeLinear and QuantizeLinear.
_ORT_FLOAT = "float between DequantizeLinear/QuantizeLinear"

FAMILIES: tuple[OpFamily, ...] = (
    OpFamily("conv (incl. depthwise, grouped)", (aten.conv1d.default, aten.conv2d.default), "weighted",
             _k("QLinearConv (fused by onnxruntime)", "CONV_2D / DEPTHWISE_CONV_2D int8", _CM_INT8, "XNNPACK qs8 conv")),
    OpFamily("linear", (aten.linear.default,), "weighted",
             _k("QGemm (2-D); float MatMul between Q/DQ (3-D)", "FULLY_CONNECTED int8", _CM_INT8, "XNNPACK qs8 fully-connected")),
    OpFamily("add / SE multiply (x * gate)", (aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor),
             "binary", _k("QLinearAdd / QLinearMul (a scalar operand is written as an exact int8 constant)",
                          "ADD / MUL int8", _CM_FP16, "XNNPACK qs8 add / multiply")),
    OpFamily("relu / relu6 / clamp / hardtanh", (aten.relu.default, aten.relu_.default, aten.relu6.default,
             aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default), "own",
             _k("folded into the producer's QLinear op or the Q range, else float Clip", "fused activation, or RELU / "
                "RELU6 / RELU_N1_TO_1 int8", _CM_FP16, "XNNPACK fused clamp")),
    OpFamily("hardswish", (aten.hardswish.default, aten.hardswish_.default), "own",
             _k(_ORT_FLOAT + " (no int8 HardSwish kernel in onnxruntime's CPU EP: HardSigmoid + Mul on every element)",
                "HARD_SWISH int8, run by LiteRT 2.3's builtin kernel: its XNNPACK delegate takes only float HARD_SWISH, "
                "so the delegated graph splits around each one (Int8Scheme.decompose_hardswish writes int8 ADD with "
                "RELU6, MUL, MUL instead, all delegated)", _CM_FP16, "XNNPACK qs8 hardswish (unverified)")),
    OpFamily("hardsigmoid", (aten.hardsigmoid.default, aten.hardsigmoid_.default), "decomposed",
             _k("QLinearAdd (+3, the clamp folded into its range) + QLinearMul (x 1/6)", "ADD (fused RELU6) + MUL int8", _CM_FP16,
                "XNNPACK qs8 add + clamp + multiply")),
    OpFamily("sigmoid", (aten.sigmoid.default, aten.sigmoid_.default), "fixed",
             _k("QLinearSigmoid (fused by onnxruntime)", "LOGISTIC int8", _CM_FP16, "XNNPACK qs8 sigmoid")),
    OpFamily("silu", (aten.silu.default, aten.silu_.default), "decomposed",
             _k("QLinearSigmoid + float Mul", "LOGISTIC + MUL int8", _CM_FP16, "XNNPACK qs8 sigmoid + multiply")),
    OpFamily("gelu", (aten.gelu.default,), "own",
             _k(_ORT_FLOAT, "GELU int8 (lookup table)", _CM_FP16, "float (no qs8 GELU in XNNPACK)")),
    OpFamily("softmax", (aten.softmax.int, aten._softmax.default), "fixed",
             _k(_ORT_FLOAT, "SOFTMAX int8", _CM_FP16, "float (XNNPACK softmax is fp32)")),
    OpFamily("layer norm", (aten.layer_norm.default,), "own",
             _k(_ORT_FLOAT, "float: no int8 layer-norm builtin (litert-torch lowers it to a float island)",
                _CM_FP16, "float (no qs8 layer norm in XNNPACK)")),
    OpFamily("matmul / bmm", (aten.matmul.default, aten.bmm.default), "matmul",
             _k(_ORT_FLOAT, "BATCH_MATMUL int8", _CM_FP16, "XNNPACK qs8 batch matmul (unverified)")),
    OpFamily("global pooling (adaptive avg pool, mean)", (aten.adaptive_avg_pool2d.default, aten.mean.dim,
             aten.avg_pool2d.default), "own",
             _k("QLinearGlobalAveragePool (the exporter writes a mean over H, W as GlobalAveragePool); other means "
                "float", "MEAN / AVERAGE_POOL_2D int8 (one SE mean stayed float, see FACTS)", _CM_FP16,
                "XNNPACK qs8 global average pooling")),
    OpFamily("concat", (aten.cat.default, aten.concat.default), "concat",
             _k(_ORT_FLOAT, "CONCATENATION int8", _CM_FP16, "XNNPACK qs8 concatenate")),
    OpFamily("upsample / interpolate", (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default,
             aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default), "same",
             _k(_ORT_FLOAT, "RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR int8", _CM_FP16,
                "XNNPACK resize bilinear (qs8); nearest float")),
    OpFamily("max pool, reshapes, dropout", (aten.max_pool2d.default, aten.flatten.using_ints, aten.view.default,
             aten.reshape.default, aten.dropout.default, aten.permute.default, aten.transpose.int,
             aten.squeeze.dim, aten.unsqueeze.default), "same",
             _k("int8 MaxPool / Reshape / Transpose (Q/DQ dropped)", "MAX_POOL_2D / RESHAPE / TRANSPOSE int8",
                _CM_FP16, "XNNPACK qs8 max pooling; reshapes are copies")),
    OpFamily("embedding lookup", (aten.embedding.default,), "embedding",
             _k("Gather on the int8 table", "float EMBEDDING_LOOKUP on the DEQUANTIZEd int8 table (litert-torch 0.10, "
                "seen on the transformer student)", "gather on an int8 constexpr table",
                "float gather (weight dequantized)")),
)

BY_TARGET: dict[Any, OpFamily] = {t: f for f in FAMILIES for t in f.targets}
FUSABLE_ACTIVATIONS = {aten.relu.default, aten.relu_.default, aten.relu6.default, aten.hardtanh.default,
                       aten.hardtanh_.default, aten.clamp.default}
BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


def family_of(target: Any) -> OpFamily | None:
    return BY_TARGET.get(target)
