"""The training loop shared by distillation and QAT: KD loss, teacher-output cache, best-epoch keeping."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import AugmentConfig
from .data import SplitBase
from .data.augment import augment_batch
from .data.batch import Inputs, call, count, rows, to_device
from .devices import Compute
from .distributed import Ranks
from .errors import EdgeforgeError
from .progress import Progress
from .resume import EpochCheckpoint

if TYPE_CHECKING:
    from .teacher_cache import TeacherStore


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T changes.
    """
    student_logits = student_logits.float()  # autocast's bf16/fp16 logits: the loss is taken in fp32
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * hard


@torch.no_grad()
def predict(model: Callable[..., torch.Tensor], x: Inputs, batch_size: int = 256,
            compute: Compute | None = None) -> torch.Tensor:
    """Logits of ``x`` (CPU, fp32); with ``compute``, batches run on its device under its autocast."""
    n = count(x)
    if compute is None:
        outs = [call(model, rows(x, slice(i, i + batch_size))) for i in range(0, n, batch_size)]
        return torch.cat(outs).float()
    with compute.autocast():
        outs = [call(model, to_device(rows(x, slice(i, i + batch_size)), compute.device)).float().cpu()
                for i in range(0, n, batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def predict_split(model: Callable[[torch.Tensor], torch.Tensor], split: SplitBase, *, batch_size: int = 256,
                  compute: Compute | None = None, rows: slice | None = None, workers: int = 0,
                  progress: Progress | None = None) -> torch.Tensor:
    """Logits of a split's ``rows`` (default all), read a batch at a time (CPU, fp32); ``progress``
    counts batches."""
    outs = []
    for i, (x, _) in enumerate(split.batches(batch_size, rows, workers)):
        outs.append(predict(model, x, batch_size, compute))
        if progress is not None:
            progress.epoch(i + 1)
    return torch.cat(outs) if outs else torch.empty(0)


def teacher_logits(teacher: Callable[[torch.Tensor], torch.Tensor], split: SplitBase, ctx: TrainContext
                   ) -> torch.Tensor:
    """The teacher's logits for a whole split: each rank computes its slice, then every rank holds all.

    With ``ctx.teacher_store`` they are read from (or written to) the on-disk cache instead.
    """
    if ctx.teacher_store is not None:
        return ctx.teacher_store.logits(teacher, split, ctx)
    return compute_teacher_logits(teacher, split, ctx)


def compute_teacher_logits(teacher: Callable[[torch.Tensor], torch.Tensor], split: SplitBase, ctx: TrainContext,
                           *, report: bool = False) -> torch.Tensor:
    """This rank's slice through the teacher, then gathered; ``report``: batch lines with the time left."""
    part = ctx.ranks.split_rows(len(split))
    batch = 256
    n_batches = max(1, -(-len(range(len(split))[part]) // batch))
    bar = Progress("teacher", n_batches, enabled=report and ctx.ranks.leader, unit="batch")
    try:
        local = predict_split(teacher, split, batch_size=batch, compute=ctx.compute, rows=part, workers=ctx.workers,
                              progress=bar)
    finally:
        bar.close()
    return ctx.ranks.gather_rows(local, len(split))


def progress_enabled(flag: bool) -> bool:
    """Whether a loop reports progress: a bar on a terminal, timed lines in a log (see progress.py)."""
    return flag


def batches(n: int, batch_size: int, generator: torch.Generator, ranks: Ranks | None = None) -> Iterator[torch.Tensor]:
    """A new order every epoch from ``generator`` (the same on every rank, like DistributedSampler.set_epoch),
    each rank taking its shard of it."""
    perm = torch.randperm(n, generator=generator)
    if ranks is not None:
        perm = ranks.shard(perm)
    for i in range(0, len(perm), batch_size):
        yield perm[i : i + batch_size]


def epoch_plan(n: int, batch_size: int, generator: torch.Generator, ranks: Ranks,
               augment: AugmentConfig | None) -> tuple[list[torch.Tensor], list[int]]:
    """This rank's batches of the epoch and one augmentation seed per batch, both drawn from ``generator``."""
    chunks = list(batches(n, batch_size, generator, ranks))
    seeds = torch.randint(0, 2**62, (len(chunks),), generator=generator).tolist() if augment is not None else []
    return chunks, seeds


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
    resumed_at: int | None = None  # the epoch (1-based) a rerun picked up at, from an interrupted run's checkpoint


class NonFiniteLoss(EdgeforgeError):
    """Training diverged; ``last_good`` holds the best state seen before (empty if none)."""

    def __init__(self, message: str, last_good: dict[str, Any]) -> None:
        super().__init__(message)
        self.last_good = last_good


class _LossNotFinite(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


StepLoss = Callable[[torch.Tensor, Inputs, torch.Tensor], torch.Tensor]


@dataclass
class TrainContext:
    """Where a training loop runs: device and precision, the ranks of a torchrun job, its epoch checkpoint."""

    compute: Compute = field(default_factory=Compute)
    ranks: Ranks = field(default_factory=Ranks)
    checkpoint: EpochCheckpoint | None = None
    log: Callable[[str], None] | None = None
    workers: int = 0  # DataLoader workers for streamed splits
    augment: AugmentConfig | None = None  # applied to training batches
    teacher_store: TeacherStore | None = None  # teacher logits cached on disk
    inputs_vary: bool = False  # augmented training data: teacher outputs are computed per batch


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _one_epoch(train: SplitBase, step_loss: StepLoss, optimizer: torch.optim.Optimizer, batch_size: int,
               g: torch.Generator, progress: Progress, ctx: TrainContext,
               scaler: torch.amp.GradScaler | None) -> tuple[float, int]:
    """One pass over this rank's shard of the training split; returns (summed loss, samples) over all ranks."""
    total, count = 0.0, 0
    dev = ctx.compute.device
    chunks, seeds = epoch_plan(len(train), batch_size, g, ctx.ranks, ctx.augment)
    for i, (idx, x, y) in enumerate(train.load(chunks, ctx.workers)):
        progress.tick(i, len(chunks))
        if ctx.augment is not None and isinstance(x, torch.Tensor):  # images only: the plan refuses it for tokens
            x = augment_batch(x, ctx.augment, seeds[i])
        with ctx.compute.autocast():
            loss = step_loss(idx, to_device(x, dev), y.to(dev))
        finite = bool(torch.isfinite(loss))
        if not ctx.ranks.all_true(finite):  # decided together: one rank's NaN stops every rank
            raise _LossNotFinite(loss.item() if not finite else float("nan"))
        _step(loss, optimizer, scaler)
        total += loss.item() * len(idx)
        count += len(idx)
    total, n = ctx.ranks.sum(total, count)
    return total, int(n)


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], val: SplitBase, ctx: TrainContext) -> float:
    """Top-1 on val; under torchrun each rank scores a slice and the counts are summed (one number everywhere)."""
    part = ctx.ranks.split_rows(len(val)) if ctx.ranks.active else slice(None)
    logits = predict_split(model, val, compute=ctx.compute, rows=part, workers=ctx.workers)
    correct = float((logits.argmax(1) == val.y[part]).sum())
    return (ctx.ranks.sum(correct)[0] if ctx.ranks.active else correct) / len(val)


@dataclass
class _Loop:
    """What an epoch checkpoint holds besides the model: optimizer, data order, RNG, loss scaler, best so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None
    extra: nn.Module | None
    result: TrainResult
    seen: int = 0

    def snapshot(self, epoch: int) -> dict[str, Any]:
        r = self.result
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "extra": self.extra.state_dict() if self.extra is not None else {},
                "best_state": r.best_state, "best_epoch": r.best_epoch, "best_val_top1": r.best_val_top1,
                "history": [vars(h) for h in r.history], "seen": self.seen}

    def restore(self, state: dict[str, Any]) -> int:
        """Load a snapshot; returns the number of finished epochs."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.extra is not None:
            self.extra.load_state_dict(state["extra"])
        r = self.result
        r.best_state, r.best_epoch, r.best_val_top1 = state["best_state"], state["best_epoch"], state["best_val_top1"]
        r.history = [EpochRecord(**h) for h in state["history"]]
        self.seen = state["seen"]
        r.resumed_at = int(state["epoch"]) + 1
        return int(state["epoch"])


def _resume(loop: _Loop, ctx: TrainContext, stage: str, epochs: int) -> int:
    state = ctx.checkpoint.load() if ctx.checkpoint is not None else None
    if state is None:
        return 0
    done = loop.restore(state)
    if ctx.log is not None and ctx.ranks.leader:
        ctx.log(f"[{stage}] resuming at epoch {done + 1}/{epochs} (epochs 1-{done} were saved by an interrupted run)")
    return done


def _end_epoch(loop: _Loop, rec: EpochRecord, ctx: TrainContext) -> None:
    """Record the epoch, keep the best state (ties: the later epoch), save the checkpoint."""
    result = loop.result
    result.history.append(rec)
    if rec.val_top1 >= result.best_val_top1:
        result.best_val_top1, result.best_epoch = rec.val_top1, rec.epoch
        result.best_state = copy.deepcopy(loop.model.state_dict())
    if ctx.checkpoint is not None:
        ctx.checkpoint.save(loop.snapshot(rec.epoch))


def fit(
    model: nn.Module,
    *,
    train: SplitBase,
    val: SplitBase,
    step_loss: StepLoss,
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
    ctx: TrainContext | None = None,
    extra: nn.Module | None = None,
) -> TrainResult:
    """Train for ``epochs``; evaluate on val each epoch; keep the best state (ties: the later epoch).

    ``step_loss(idx, x, y)`` returns the loss of one batch (``x``, ``y`` on the training device);
    ``idx`` indexes the training split so callers can look up cached teacher outputs. ``extra``:
    modules trained beside the model (hint adapters), saved with it in the epoch checkpoint.
    """
    ctx = ctx or TrainContext()
    base_lrs = [grp["lr"] for grp in optimizer.param_groups]  # before a checkpoint's decayed lrs are loaded
    loop = _Loop(model, optimizer, torch.Generator().manual_seed(seed), ctx.compute.scaler(), extra,
                 TrainResult(best_state={}, best_epoch=-1, best_val_top1=-1.0))
    first = _resume(loop, ctx, stage, epochs)
    result = loop.result
    start = time.perf_counter()
    progress = Progress(stage, epochs, enabled=show_progress and ctx.ranks.leader)
    progress.current = first
    for epoch in range(first, epochs):
        t0 = time.perf_counter()
        factor = lr_factor(schedule, epoch, epochs, warmup)
        for grp, base in zip(optimizer.param_groups, base_lrs, strict=True):
            grp["lr"] = base * factor
        if on_epoch_start:
            on_epoch_start(epoch)
        train_mode(model)
        try:
            total, count = _one_epoch(train, step_loss, optimizer, batch_size, loop.generator, progress, ctx,
                                      loop.scaler)
        except _LossNotFinite as exc:
            progress.close()
            raise NonFiniteLoss(f"{stage}: the loss became {exc.value} at epoch {epoch + 1}; lower {stage}.lr",
                                result.best_state) from None
        loop.seen += count
        ctx.ranks.sync_buffers(model)
        eval_mode(model)
        rec = EpochRecord(epoch + 1, total / max(count, 1), evaluate(model, val, ctx), base_lrs[0] * factor,
                          time.perf_counter() - t0)
        _end_epoch(loop, rec, ctx)
        progress.epoch(epoch + 1, loss=rec.loss, val_top1=rec.val_top1)
    progress.close()
    result.seconds = time.perf_counter() - start
    result.samples_per_second = (loop.seen / result.seconds) if result.seconds else 0.0
    return result


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
