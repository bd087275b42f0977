"""Name the float ops left in a full-int8 TFLite file by the PyTorch module and op they came from.

litert-torch names each op's output tensor after the module hierarchy it was traced in, e.g.
``pkg.MobileNet/torch.nn.modules.container.Sequential_features/pkg.InvertedResidual_1/...
/torch.nn.modules.activation.Hardsigmoid_gate;`` (one ``<class>_<attribute>`` segment per level;
several locations joined by ``;`` when ops were fused). The path is resolved against the student's
own module names (``features.1.se.gate``); the PyTorch op comes from the carrier's FX nodes in that
module: their ``torch_fn`` metadata names the function the user wrote (``hardsigmoid`` even where
the quantizer decomposed it into add/hardtanh/mul), matched to the TFLite op by kind.
"""

from __future__ import annotations

from typing import Any

import torch

# TFLite builtin -> the aten op names it is lowered from (to pick a node when a module holds several).
_ATEN_FOR = {
    "ADD": {"add"}, "SUB": {"sub"}, "MUL": {"mul"}, "DIV": {"div"}, "MEAN": {"mean", "adaptive_avg_pool2d"},
    "SUM": {"sum"}, "LOGISTIC": {"sigmoid"}, "TANH": {"tanh"}, "RSQRT": {"rsqrt"}, "SQRT": {"sqrt"},
    "GELU": {"gelu"}, "SOFTMAX": {"softmax", "_softmax"}, "CONCATENATION": {"cat", "concat"},
    "RESHAPE": {"view", "reshape", "flatten"}, "BATCH_MATMUL": {"matmul", "bmm"}, "FULLY_CONNECTED": {"linear"},
    "CONV_2D": {"conv2d"}, "DEPTHWISE_CONV_2D": {"conv2d"}, "HARD_SWISH": {"hardswish"},
    "MAXIMUM": {"clamp", "hardtanh"}, "MINIMUM": {"clamp", "hardtanh"}, "RELU6": {"hardtanh", "relu6"},
    "RELU": {"relu"}, "GATHER": {"embedding"}, "RESIZE_BILINEAR": {"upsample_bilinear2d"},
    "RESIZE_NEAREST_NEIGHBOR": {"upsample_nearest2d"}, "AVERAGE_POOL_2D": {"avg_pool2d"},
    "MAX_POOL_2D": {"max_pool2d"}, "SQUARED_DIFFERENCE": {"sub", "var_mean", "layer_norm"},
    "TRANSPOSE": {"permute", "transpose"},
}


def module_path(tensor_name: str, known: set[str]) -> str | None:
    """``features.1.se.gate`` from a litert-torch tensor name, or None when it names no module."""
    location = tensor_name.split(";")[0]
    segments = location.split("/")[1:]  # the first segment is the root module's class
    return _resolve("", segments, known)[1] or None


def _resolve(path: str, segments: list[str], known: set[str]) -> tuple[int, str]:
    """(segments explained, module path): the path explaining most segments in order, then the deepest.

    Class names may hold "_" too, and containers that are never called (ModuleList, ModuleDict)
    leave no segment, so one segment can match several modules below ``path``: ``EncoderLayer_0``
    is ``layers.0`` but also ``layers.0.ffn.0``, which then cannot explain ``LayerNorm_norm1``.
    """
    if not segments:
        return 0, path
    leaf = segments[0].rsplit(".", 1)[-1]  # "Hardsigmoid_gate": class, "_", attribute
    attrs = [leaf[i + 1:] for i, ch in enumerate(leaf) if ch == "_" and i > 0]
    below = [k for k in known if not path or k.startswith(path + ".")]
    best, score = path, (0, path.count(".") + (path != ""))
    # The first cut (the shortest class name) wins ties: "At_depthwise_conv" is at.depthwise_conv.
    for attr in attrs:
        for cand in sorted((k for k in below if k == attr or k.endswith("." + attr)), key=lambda k: k.count(".")):
            used, deeper = _resolve(cand, segments[1:], known)
            if (used + 1, deeper.count(".") + 1) > score:
                best, score = deeper, (used + 1, deeper.count(".") + 1)
    return score[0], best


def _nodes_by_module(gm: torch.fx.GraphModule) -> dict[str, list[tuple[str, str]]]:
    """Module path -> [(aten op name, torch function name)] of the carrier's compute nodes."""
    out: dict[str, list[tuple[str, str]]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or "quantize" in str(node.target):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        where = str(list(stack.values())[-1][0]) if stack else ""
        aten = str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
        fn = node.meta.get("torch_fn")
        torch_name = str(fn[1]).rsplit(".", 1)[-1] if fn else aten
        out.setdefault(where, []).append((aten, torch_name))
    return out


def _torch_op(tflite_op: str, candidates: list[tuple[str, str]]) -> str | None:
    if tflite_op in ("QUANTIZE", "DEQUANTIZE"):
        return None  # an island's edge, not an op the user wrote
    wanted = _ATEN_FOR.get(tflite_op, set())
    matched = [fn for aten, fn in candidates if aten in wanted] or [fn for _, fn in candidates]
    names = list(dict.fromkeys(matched))
    if len(names) > 3:  # a module running many ops: the TFLite op says more than a long list
        return None
    return "/".join(names) if names else None


def name_ops(entries: list[dict[str, Any]], model: torch.nn.Module, carrier: torch.fx.GraphModule | None) -> None:
    """Add ``module`` and ``torch_op`` to each entry (which holds ``op`` and ``tensor``), in place."""
    known = {name for name, _ in model.named_modules() if name}
    by_module = _nodes_by_module(carrier) if carrier is not None else {}
    for e in entries:
        path = module_path(e.pop("tensor", ""), known)
        e["module"] = path or "(top level)"
        e["torch_op"] = _torch_op(e["op"], by_module.get(path or "", []))
