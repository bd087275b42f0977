"""The training loop shared by distillation and QAT: KD loss, teacher-output cache, best-epoch keeping."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split
from .errors import EdgeforgeError
from .progress import Progress


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T changes.
    """
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * hard


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(outs).float()


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def progress_enabled(flag: bool) -> bool:
    """Whether a loop reports progress: a bar on a terminal, timed lines in a log (see progress.py)."""
    return flag


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


def lr_factor(schedule: str, epoch: int, epochs: int, warmup: int) -> float:
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "cosine":
        span = max(1, epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))
    if schedule == "step":
        return 0.1 ** (epoch // max(1, epochs // 3))
    return 1.0


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    val_top1: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    best_state: dict[str, Any]
    best_epoch: int
    best_val_top1: float
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0


class NonFiniteLoss(EdgeforgeError):
    """Training diverged; ``last_good`` holds the best state seen before (empty if none)."""

    def __init__(self, message: str, last_good: dict[str, Any]) -> None:
        super().__init__(message)
        self.last_good = last_good


class _LossNotFinite(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def _one_epoch(train: Split, step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer, batch_size: int, g: torch.Generator,
               progress: Progress) -> tuple[float, int]:
    """One pass over the training split; returns (summed loss, samples)."""
    total, count = 0.0, 0
    n_batches = (len(train) + batch_size - 1) // batch_size
    for i, idx in enumerate(batches(len(train), batch_size, g)):
        progress.tick(i, n_batches)
        loss = step_loss(idx, train.x[idx], train.y[idx])
        if not torch.isfinite(loss):
            raise _LossNotFinite(loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total, count


def fit(
    model: nn.Module,
    *,
    train: Split,
    val: Split,
    step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    schedule: str,
    warmup: int,
    seed: int,
    stage: str,
    show_progress: bool,
    train_mode: Callable[[nn.Module], object] = nn.Module.train,
    eval_mode: Callable[[nn.Module], object] = nn.Module.eval,
    on_epoch_start: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train for ``epochs``; evaluate on val each epoch; keep the best state (ties: the later epoch).

    ``step_loss(idx, x, y)`` returns the loss of one batch; ``idx`` indexes the training split so
    callers can look up cached teacher outputs.
    """
    g = torch.Generator().manual_seed(seed)
    base_lrs = [grp["lr"] for grp in optimizer.param_groups]
    result = TrainResult(best_state={}, best_epoch=-1, best_val_top1=-1.0)
    seen = 0
    start = time.perf_counter()
    progress = Progress(stage, epochs, enabled=show_progress)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        factor = lr_factor(schedule, epoch, epochs, warmup)
        for grp, base in zip(optimizer.param_groups, base_lrs, strict=True):
            grp["lr"] = base * factor
        if on_epoch_start:
            on_epoch_start(epoch)
        train_mode(model)
        try:
            total, count = _one_epoch(train, step_loss, optimizer, batch_size, g, progress)
        except _LossNotFinite as exc:
            progress.close()
            raise NonFiniteLoss(f"{stage}: the loss became {exc.value} at epoch {epoch + 1}; lower {stage}.lr",
                                result.best_state) from None
        seen += count
        eval_mode(model)
        acc = top1(predict(model, val.x), val.y)
        rec = EpochRecord(epoch + 1, total / max(count, 1), acc, base_lrs[0] * factor, time.perf_counter() - t0)
        result.history.append(rec)
        if acc >= result.best_val_top1:
            result.best_val_top1, result.best_epoch = acc, epoch + 1
            result.best_state = copy.deepcopy(model.state_dict())
        progress.epoch(epoch + 1, loss=rec.loss, val_top1=acc)
    progress.close()
    result.seconds = time.perf_counter() - start
    result.samples_per_second = seen / result.seconds if result.seconds else 0.0
    return result


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
