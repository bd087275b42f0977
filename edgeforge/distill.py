"""Stage 1: distil the teacher into the student (softened-logit KD + hard labels + optional hints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import DistillConfig, HintConfig
from .data import DataBundle
from .data.batch import Inputs, call
from .devices import on_device
from .errors import ConfigError
from .training import TrainContext, TrainResult, fit, kd_loss, make_optimizer, teacher_logits


class FeatureTap:
    """Records the output of named submodules with forward hooks."""

    def __init__(self, model: nn.Module, names: list[str], role: str) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            if name not in modules:
                near = ", ".join(n for n in list(modules)[1:12] if n)
                raise ConfigError(f"distill.hints: {role} has no submodule '{name}' (some it has: {near})")
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            self.outputs[name] = out

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class HintAdapter(nn.Module):
    """FitNets regressor: a 1x1 conv (or linear) mapping student features to the teacher's width."""

    def __init__(self, s_feat: torch.Tensor, t_feat: torch.Tensor) -> None:
        super().__init__()
        if s_feat.ndim == 4:
            self.proj: nn.Module = nn.Conv2d(s_feat.shape[1], t_feat.shape[1], 1)
        else:
            self.proj = nn.Linear(s_feat.shape[-1], t_feat.shape[-1])
        self.spatial = (int(t_feat.shape[2]), int(t_feat.shape[3])) if t_feat.ndim == 4 else None

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        y = self.proj(s)
        if self.spatial is not None and tuple(y.shape[2:]) != self.spatial:
            y = F.adaptive_avg_pool2d(y, self.spatial)
        return y


class _WithAdapters(nn.Module):
    """The student and its hint adapters as one module, so DDP all-reduces the adapters' gradients too."""

    def __init__(self, student: nn.Module, adapters: nn.ModuleList) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self.student(*x)


@dataclass
class DistillOutput:
    student: nn.Module
    result: TrainResult


def distill(teacher: nn.Module, student: nn.Module, data: DataBundle, cfg: DistillConfig, *,
            augmented: bool, show_progress: bool, ctx: TrainContext | None = None) -> DistillOutput:
    """Train ``student`` against ``teacher`` on ``ctx``'s device (autocast in its precision, data-parallel
    over its ranks); the student comes back on the CPU holding its best epoch's weights."""
    ctx = ctx or TrainContext()
    torch.manual_seed(cfg.seed)
    teacher.eval()
    hints: list[HintConfig] = cfg.hints
    t_tap = FeatureTap(teacher, [h.teacher for h in hints], "teacher") if hints else None
    s_tap = FeatureTap(student, [h.student for h in hints], "student") if hints else None
    adapters = nn.ModuleList()
    if hints:
        with torch.no_grad():
            probe = data.train.head(2)
            call(teacher, probe)
            student.eval()
            call(student, probe)
        for h in hints:
            adapters.append(HintAdapter(s_tap.outputs[h.student], t_tap.outputs[h.teacher]))  # type: ignore[union-attr]

    with on_device(teacher, ctx.compute.device):
        result = _train(teacher, student, adapters, (t_tap, s_tap), data, cfg, augmented, show_progress, ctx)
    student.cpu().load_state_dict(result.best_state)
    ctx.ranks.same_state(student, "distilled students")
    return DistillOutput(student.eval(), result)


def _train(teacher: nn.Module, student: nn.Module, adapters: nn.ModuleList, taps: tuple[FeatureTap | None, ...],
           data: DataBundle, cfg: DistillConfig, augmented: bool, show_progress: bool, ctx: TrainContext) -> TrainResult:
    hints, (t_tap, s_tap) = cfg.hints, taps
    net = ctx.ranks.wrap(_WithAdapters(student, adapters).to(ctx.compute.device))
    # Without augmentation the teacher's logits never change: compute them once, not every epoch.
    # Feature hints need the teacher's intermediate features per batch, so they bypass the cache.
    cache = None if (augmented or hints) else teacher_logits(teacher, data.train, ctx)

    def step_loss(idx: torch.Tensor, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            t_logits = cache[idx].to(y.device)
        else:
            with torch.no_grad():
                t_logits = call(teacher, x)
        s_logits = call(net, x)
        loss = kd_loss(s_logits, t_logits, y, cfg.temperature, cfg.alpha)
        for h, adapter in zip(hints, adapters, strict=True):
            s_f = adapter(s_tap.outputs[h.student])  # type: ignore[union-attr]
            t_f = t_tap.outputs[h.teacher].detach()  # type: ignore[union-attr]
            loss = loss + h.weight * F.mse_loss(s_f, t_f)
        return loss

    params = list(student.parameters()) + list(adapters.parameters())
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    try:
        return fit(student, train=data.train, val=data.val, step_loss=step_loss, optimizer=opt,
                   epochs=cfg.epochs, batch_size=cfg.batch_size, schedule=cfg.schedule, warmup=cfg.warmup_epochs,
                   seed=cfg.seed, stage="distill", show_progress=show_progress, ctx=ctx,
                   extra=adapters if hints else None)
    finally:
        for tap in (t_tap, s_tap):
            if tap is not None:
                tap.close()
