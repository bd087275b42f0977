"""Float fallback under an accuracy budget: which conv/linear layers to keep float (``qat.fallback``).

After QAT, when the carrier's metric (``qat.fallback.metric``, top-1 by default) on the validation
split is more than ``max_drop_points`` below the float student's, layers are reverted to float one
at a time (their weight fake-quantizers switched off) in an int8 simulation of the float student,
the way NNCF's accuracy control reverts quantizer groups: ranked by how much a revert shrinks the
logit error on the validation samples int8 moved most, re-ranked after every layer kept, and a
revert that does not raise the metric is stepped back. The fewest layers that meet the budget (at
most ``max_float_layers``) are kept float by a second QAT run from the float student; its carrier
is the one every int8 exporter reads, and it must meet the budget itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import QatConfig
from ..data import DataBundle, Split, SplitBase
from ..errors import ConfigError, EdgeforgeError
from ..metrics import Metric, label, resolve_metric
from ..records import Fallback, FallbackLayer, FallbackStep
from ..training import predict, predict_split
from .op_families import family_of
from .quantizer import Int8Quantizer, Int8Scheme

WORST_SAMPLES = 300  # NNCF ranks on a subset of this size: the samples int8 moved most
Log = Callable[[str], None]


def weighted_modules(gm: torch.fx.GraphModule) -> dict[str, list[torch.fx.Node]]:
    """Module path (``features.0.0``) -> its conv/linear nodes, in graph order."""
    out: dict[str, list[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        family = family_of(node.target) if node.op == "call_function" else None
        stack = node.meta.get("nn_module_stack") or {}
        if family is not None and family.how == "weighted" and stack:
            out.setdefault(str(list(stack.values())[-1][0]), []).append(node)
    return out


def float_layers(gm: torch.fx.GraphModule) -> list[str]:
    """The conv/linear modules of a converted carrier whose weights are not dequantized from int8."""
    def quantized(node: torch.fx.Node) -> bool:
        w = node.args[1] if len(node.args) > 1 else None
        return isinstance(w, torch.fx.Node) and "dequantize" in str(w.target)

    return [m for m, nodes in weighted_modules(gm).items() if not all(quantized(n) for n in nodes)]


@dataclass
class Simulation:
    """An int8 simulation of the float student with a switch per layer: its weight fake-quantizers."""

    model: torch.fx.GraphModule
    switches: dict[str, list[nn.Module]]
    val: SplitBase
    metric: Metric
    float_value: float  # the float student's metric
    float_worst: torch.Tensor  # the float student's logits on the worst samples
    worst: torch.Tensor  # their indices

    def evaluate(self, kept: list[str]) -> tuple[float, float]:
        """(the metric's drop in points, logit error on the worst samples) with ``kept`` layers float."""
        for module, quantizers in self.switches.items():
            for fq in quantizers:
                fq.enable_fake_quant(module not in kept)  # type: ignore[operator]
        with torch.no_grad():
            logits = predict_split(self.model, self.val)
        error = float(((logits[self.worst] - self.float_worst) ** 2).mean())
        return (self.float_value - self.metric(logits.numpy(), self.val.y.numpy())) * 100, error


def scheme_of(cfg: QatConfig) -> Int8Scheme:
    return Int8Scheme(learn_activation_ranges=cfg.learn_ranges, range_init=cfg.range_init,
                      weight_bits=4 if cfg.scheme == "w4a8" else 8)


def simulation(student: nn.Module, data: DataBundle, calibration: Split, cfg: QatConfig) -> Simulation:
    """The float student quantized as QAT starts it: ranges observed in float on the calibration split.

    Not the trained QAT graph: its activation ranges after a broken layer were learned on that layer's
    broken output, so reverting the layer there clips what it now computes (seen: 4.7 pt left of 78).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .qat import _set_fake_quant, export_for_training

    gm = export_for_training(copy.deepcopy(student).cpu().train(), data.train.head(2))
    prepared = prepare_qat_pt2e(gm, Int8Quantizer(scheme_of(cfg), float_modules=tuple(cfg.float_modules)))
    move_exported_model_to_eval(prepared)
    _set_fake_quant(prepared, observe=True, quantize=False, learn=False)
    with torch.no_grad():
        predict(prepared, calibration.x, 64)
    _set_fake_quant(prepared, observe=False, quantize=True, learn=False)
    switches: dict[str, list[nn.Module]] = {}
    for module, nodes in weighted_modules(prepared).items():
        fqs = [n.args[1] for n in nodes if isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "call_module"]
        if fqs and module not in cfg.float_modules:
            switches[module] = [prepared.get_submodule(str(f.target)) for f in fqs]
    y = data.val.y
    with torch.no_grad():
        float_logits = predict_split(copy.deepcopy(student).cpu().eval(), data.val)
        int8_logits = predict_split(prepared, data.val)
    worst = ((int8_logits - float_logits) ** 2).mean(1).argsort(descending=True)[:WORST_SAMPLES]
    metric = resolve_metric(cfg.fallback.metric if cfg.fallback else "top1", data.num_classes)
    return Simulation(prepared, switches, data.val, metric, metric(float_logits.numpy(), y.numpy()), float_logits[worst],
                      worst)


def rank(sim: Simulation, kept: list[str]) -> list[FallbackLayer]:
    """Every layer not yet kept, reverted on top of ``kept``: the largest error reduction first."""
    scored = []
    for module in sim.switches:
        if module not in kept:
            drop, error = sim.evaluate([*kept, module])
            scored.append(FallbackLayer(module, drop, error))
    return sorted(scored, key=lambda s: (s.error, s.drop_points))


def search(sim: Simulation, cfg: QatConfig, record: Fallback, log: Log) -> None:
    """Greedy with re-ranking: keep the best-ranked layer whose revert lowers the drop, until the budget holds.

    Reverts that do not raise the metric are stepped back. When none does (two broken layers: each alone
    leaves top-1 at chance), the best-ranked one is kept if it lowers the logit error, so the search
    moves on instead of stopping. Drops are the simulation's, from its own all-int8 baseline.
    """
    fb = cfg.fallback
    assert fb is not None
    drop, error = sim.evaluate([])
    while drop > fb.max_drop_points:
        ranked = rank(sim, record.kept)
        if not record.ranking:
            record.ranking = ranked
        if len(record.kept) >= fb.max_float_layers:
            raise _over_budget(record, drop, f"keeping {len(record.kept)} layer(s) float (max_float_layers)",
                               "raise qat.fallback.max_float_layers or max_drop_points")
        helps = next((r for r in ranked if r.drop_points < drop), None)
        tried = ranked[: ranked.index(helps)] if helps else ranked
        if helps is None and ranked and ranked[0].error < error:
            helps, tried = ranked[0], ranked[1:]
        record.steps += [FallbackStep(r.module, r.drop_points, kept=False) for r in tried]  # stepped back
        if helps is None:
            raise _over_budget(record, drop, f"no further float layer helps beyond {len(record.kept)} kept",
                               "fix the layers' ranges in the student (e.g. weight outliers) or raise max_drop_points")
        record.steps.append(FallbackStep(helps.module, helps.drop_points, kept=True))
        record.kept.append(helps.module)
        drop, error = helps.drop_points, helps.error
        log(f"[qat] fallback: {helps.module} kept float, simulated drop {drop:.2f} pt")


def _over_budget(record: Fallback, best: float, how: str, fix: str) -> EdgeforgeError:
    return EdgeforgeError(f"int8 {label(record.metric)} is {record.drop_points:.2f} pt below the float student on "
                          f"the validation split; {how} gets it to {best:.2f} pt at best, over max_drop_points "
                          f"{record.max_drop_points:g}", key="qat.fallback", fix=fix)


def check_modules(student: nn.Module, names: list[str]) -> None:
    known = {n for n, m in student.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} is not a conv/linear module of the student",
                          key="qat.float_modules", fix=f"use names from: {', '.join(sorted(known)) or 'none'}")


def float_fallback(out: Any, student: nn.Module, data: DataBundle, calibration: Split, cfg: QatConfig,
                   rerun: Callable[[QatConfig], Any], log: Log = lambda _m: None) -> tuple[Any, Fallback | None]:
    """``out`` (a QatOutput), or the output of a second QAT run with the layers the budget needs kept float."""
    check_modules(student, cfg.float_modules)
    fb = cfg.fallback
    if fb is None:
        return out, None
    metric = resolve_metric(fb.metric, data.num_classes)

    def value(model: Callable[[torch.Tensor], torch.Tensor]) -> float:
        with torch.no_grad():
            return metric(predict_split(model, data.val).numpy(), data.val.y.numpy())

    float_value, int8_value = value(copy.deepcopy(student).cpu().eval()), value(out.converted)
    drop = (float_value - int8_value) * 100
    record = Fallback(fb.metric, fb.max_drop_points, fb.max_float_layers, float_value, int8_value, drop,
                      needed=drop > fb.max_drop_points)
    if not record.needed:
        return out, record
    sim = simulation(student, data, calibration, cfg)
    search(sim, cfg, record, log)
    log(f"[qat] fallback: QAT again with {', '.join(record.kept)} float")
    out = rerun(cfg.model_copy(update={"float_modules": [*cfg.float_modules, *record.kept]}))
    record.final_value = value(out.converted)
    record.final_drop_points = (float_value - record.final_value) * 100
    if record.final_drop_points > fb.max_drop_points:
        raise _over_budget(record, record.final_drop_points, f"QAT with {', '.join(record.kept)} float",
                           "raise qat.epochs or qat.fallback.max_float_layers")
    return out, record
