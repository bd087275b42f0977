"""Stage 2: int8 quantization-aware fine-tuning of the distilled student on the PT2E carrier.

export (dynamic batch) -> prepare_qat_pt2e (conv-BN fused for training, fake-quant inserted) ->
range initialisation on the calibration set -> fine-tuning (KD vs the teacher + hard labels;
activation scales learned with LSQ) -> convert_pt2e (BN folded, quantize/dequantize ops with the
learned scales). The converted graph is the carrier every int8 exporter reads.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from ..cache import atomic_write_bytes
from ..config import QatConfig
from ..data import DataBundle, Split
from ..data.batch import Inputs, as_tuple, call, clone, count, rows
from ..devices import exact_fp32, on_device
from ..errors import ModelError
from ..training import TrainContext, TrainResult, evaluate, fit, kd_loss, make_optimizer, predict, teacher_logits
from .quantizer import Int8Quantizer, Int8Scheme


def export_for_training(model: nn.Module, example: Inputs) -> torch.fx.GraphModule:
    """torch.export with a dynamic batch (an example batch of 1 would specialise the graph to 1)."""
    ex = two_rows(example)
    try:
        ep = torch.export.export(model, ex, dynamic_shapes=_batch_dims(ex))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"student: torch.export cannot capture the model for QAT ({type(exc).__name__}: {first})") from None
    return ep.module()


def two_rows(example: Inputs) -> tuple[torch.Tensor, ...]:
    """Two rows of every input, owning their storage (a view would save the whole split with the program)."""
    n = count(example)
    return as_tuple(clone(rows(example, torch.arange(2) % n)))


def _batch_dims(ex: tuple[torch.Tensor, ...]) -> tuple[dict[int, Dim], ...]:
    batch = Dim("batch", min=1, max=1 << 16)
    return tuple({0: batch} for _ in ex)


@dataclass
class QatOutput:
    converted: torch.fx.GraphModule
    result: TrainResult
    convert_max_diff: float
    quantized_ops: int


def _set_fake_quant(model: nn.Module, *, observe: bool, quantize: bool, learn: bool) -> None:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
    from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize

    for m in model.modules():
        if isinstance(m, LearnableFakeQuantize):
            m.enable_fake_quant(quantize)
            if learn:
                m.enable_range_learning()
            else:
                m.enable_observer(observe)
        elif isinstance(m, FakeQuantizeBase):
            m.enable_fake_quant(quantize)
            m.enable_observer(observe)


def _prepare(student: nn.Module, data: DataBundle, calibration: Split, cfg: QatConfig) -> torch.fx.GraphModule:
    """Export, prepare and range-initialise on the CPU: every rank and every device starts from the same ranges."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    scheme = Int8Scheme(learn_activation_ranges=cfg.learn_ranges, range_init=cfg.range_init,
                        weight_bits=4 if cfg.scheme == "w4a8" else 8)
    gm = export_for_training(copy.deepcopy(student).cpu().train(), data.train.head(2))
    prepared = prepare_qat_pt2e(gm, Int8Quantizer(scheme, float_modules=tuple(cfg.float_modules)))
    # Range initialisation: observe the calibration set with fake-quant off and BN in eval mode,
    # so the first QAT step starts from calibrated scales instead of one batch's statistics.
    move_exported_model_to_eval(prepared)
    _set_fake_quant(prepared, observe=True, quantize=False, learn=False)
    predict(prepared, calibration.x, 64)
    _set_fake_quant(prepared, observe=not cfg.learn_ranges, quantize=True, learn=cfg.learn_ranges)
    return prepared


def quantization_aware_training(
    student: nn.Module, teacher: nn.Module | None, data: DataBundle, calibration: Split, cfg: QatConfig, *,
    temperature: float, alpha: float, show_progress: bool, ctx: TrainContext | None = None,
) -> QatOutput:
    """QAT in fp32 on ``ctx``'s device and ranks (its precision is not used); converted on the CPU."""
    given = ctx or TrainContext()
    ctx = replace(given, compute=given.compute.fp32())
    torch.manual_seed(cfg.seed)
    prepared = _prepare(student, data, calibration, cfg)
    keep = teacher if cfg.keep_teacher and cfg.epochs > 0 else None
    dev = ctx.compute.device
    with exact_fp32(), (on_device(keep, dev) if keep is not None else contextlib.nullcontext()):
        result = _fine_tune(prepared.to(dev), keep, data, cfg, temperature, alpha, show_progress, ctx)
    prepared.cpu().load_state_dict(result.best_state)
    converted, max_diff, n_q = _convert(prepared, data.val.head(256))
    ctx.ranks.same_everywhere(carrier_digest(converted), "QAT carriers")
    return QatOutput(converted, result, max_diff, n_q)


def _convert(prepared: torch.fx.GraphModule, probe: Inputs) -> tuple[torch.fx.GraphModule, float, int]:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    _set_fake_quant(prepared, observe=False, quantize=True, learn=False)
    before = predict(prepared, probe)
    converted = convert_pt2e(prepared)
    after = predict(converted, probe)
    n_q = sum(1 for n in converted.graph.nodes if n.op == "call_function" and "quantize_per" in str(n.target))
    return converted, float((before - after).abs().max()), n_q


def _fine_tune(prepared: torch.fx.GraphModule, teacher: nn.Module | None, data: DataBundle, cfg: QatConfig,
               temperature: float, alpha: float, show_progress: bool, ctx: TrainContext) -> TrainResult:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    if cfg.epochs == 0:  # PTQ: the calibrated ranges as they are, no fine-tuning
        _set_fake_quant(prepared, observe=False, quantize=True, learn=False)
        return TrainResult(best_state=prepared.state_dict(), best_epoch=0,
                           best_val_top1=evaluate(prepared, data.val, ctx))
    range_params = [p for n, p in prepared.named_parameters() if n.endswith((".scale", ".zero_point"))]
    range_ids = {id(p) for p in range_params}
    weights = [p for p in prepared.parameters() if id(p) not in range_ids]
    groups: list[dict[str, Any]] = [{"params": weights}]
    if range_params:
        groups.append({"params": range_params, "lr": cfg.lr * cfg.range_lr_ratio, "weight_decay": 0.0})
    opt = make_optimizer("adam", groups, cfg.lr, cfg.weight_decay)

    # teacher outputs are computed once unless the training inputs change every epoch (augmentation)
    cache = teacher_logits(teacher, data.train, ctx) if teacher is not None and not ctx.inputs_vary else None
    t = cfg.temperature or temperature
    a = (cfg.alpha if cfg.alpha is not None else alpha) if teacher is not None else 0.0
    # DDP over the prepared graph; .train()/.eval() raise on it, so modes switch on the graph itself
    net = ctx.ranks.wrap(prepared)

    def step_loss(idx: torch.Tensor, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            t_logits = cache[idx].to(y.device)
        elif teacher is not None and a > 0:
            with torch.no_grad():
                t_logits = call(teacher, x)
        else:
            t_logits = None
        return kd_loss(call(net, x), t_logits, y, t, a)

    def on_epoch_start(epoch: int) -> None:
        # With observed (not learned) ranges, freeze them for the last epoch so the final
        # weights are fine-tuned against the exact scales the artifacts will carry.
        if not cfg.learn_ranges and cfg.epochs > 1 and epoch == cfg.epochs - 1:
            _set_fake_quant(prepared, observe=False, quantize=True, learn=False)

    return fit(prepared, train=data.train, val=data.val, step_loss=step_loss, optimizer=opt,
               epochs=cfg.epochs, batch_size=cfg.batch_size, schedule="cosine", warmup=0, seed=cfg.seed,
               stage="qat", show_progress=show_progress, ctx=ctx,
               train_mode=move_exported_model_to_train, eval_mode=move_exported_model_to_eval,
               on_epoch_start=on_epoch_start)


def save_carrier(converted: torch.fx.GraphModule, example: Inputs, path: str) -> None:
    """Save the converted QAT graph as a torch.export program (dynamic batch).

    The example is cloned: a slice of the training split is a view, and the program file would
    otherwise carry the whole split's storage (173 MB for Fashion-MNIST's 23 k-parameter student).
    """
    ex = two_rows(example)
    ep = torch.export.export(converted, ex, dynamic_shapes=_batch_dims(ex))
    buf = io.BytesIO()  # through memory: torch's zip writer aborts the process on a full disk
    torch.export.save(ep, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def carrier_digest(gm: torch.fx.GraphModule) -> str:
    """A content hash of the carrier (graph code + every tensor it reads).

    torch.export's .pt2 files differ byte-wise between processes (a random serialization id and
    object ids in provenance metadata), so identical carriers are recognised by content instead.
    """
    import hashlib

    h = hashlib.sha256(gm.code.encode())
    tensors = dict(gm.state_dict())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj: object = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                tensors[str(node.target)] = obj
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_carrier(path: str) -> torch.fx.GraphModule:
    """Load a carrier saved by save_carrier; never runs code from the file (it may sit in a shared cache).

    Raises UnsafeProgramError for a file that is not plain data (treat it as a cache miss) and
    ModelError for one torch cannot read.
    """
    import torchao.quantization.pt2e  # noqa: F401  registers the quantized_decomposed ops

    from ..models.program_file import load_program

    return load_program(Path(path)).module()
