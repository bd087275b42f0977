"""Data-parallel training under ``torchrun``: PyTorch's DDP with gloo (CPU) or nccl (CUDA).

``Ranks`` is the one handle the training loop holds; with one process (no torchrun) every method
is a no-op, so the loop is written once. Decisions that could split the ranks (best epoch, a
non-finite loss) are taken from all-reduced values, never from one rank's view. Buffers are not
gradients: BatchNorm running statistics are averaged and observer ranges all-reduced (MIN/MAX)
after every epoch, so every rank holds the same model, and the same carrier, before rank 0 exports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .devices import Compute, check_precision, resolve_device
from .errors import EdgeforgeError


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """DistributedSampler's split: pad by wrapping to a multiple of world, then every world-th index."""
        if not self.active:
            return order
        total = -(-len(order) // self.world) * self.world
        padded = torch.cat([order, order[: total - len(order)]]) if total > len(order) else order
        return padded[self.rank :: self.world]

    def _reduce(self, values: list[float], op: Any) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return [float(v) for v in t.cpu()]

    def sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        import torch.distributed as dist

        return self._reduce(list(values), dist.ReduceOp.SUM)

    def all_true(self, flag: bool) -> bool:
        """True on every rank only if true on every rank (one rank's NaN stops all, none is left waiting)."""
        if not self.active:
            return flag
        import torch.distributed as dist

        return self._reduce([1.0 if flag else 0.0], dist.ReduceOp.MIN)[0] == 1.0

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a stage decision, a checkpoint)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def broadcast_state(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's copy of the same architecture."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in module.state_dict().values():
            moved = t.detach().to(self.device)
            dist.broadcast(moved, src=0)
            t.copy_(moved)

    def gather_rows(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate every rank's rows of a contiguous split (``split_rows``) in rank order."""
        if not self.active:
            return local
        import torch.distributed as dist

        per = -(-total // self.world)
        padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: len(local)] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        rows = [p[: len(range(r * per, min(total, (r + 1) * per)))] for r, p in enumerate(parts)]
        return torch.cat(rows).cpu()

    def split_rows(self, total: int) -> slice:
        per = -(-total // self.world)
        return slice(self.rank * per, min(total, (self.rank + 1) * per))

    def same_everywhere(self, value: str, what: str) -> None:
        """Raise on every rank if ``value`` (a digest) differs between ranks."""
        if not self.active:
            return
        import torch.distributed as dist

        seen: list[Any] = [None] * self.world
        dist.all_gather_object(seen, value)
        if len(set(seen)) != 1:
            shown = ", ".join(f"rank {r}: {str(v)[:12]}" for r, v in enumerate(seen))
            raise EdgeforgeError(f"train: the ranks hold different {what} ({shown}); a buffer is not synchronised",
                                 fix="report this with the config; run without torchrun meanwhile")

    def same_state(self, module: nn.Module, what: str) -> None:
        """Raise unless every rank holds the same parameters and buffers (checked by content digest)."""
        if self.active:
            self.same_everywhere(state_digest(module), what)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model``; buffers are synchronised per epoch by ``sync_buffers``, not per forward."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # no per-forward buffer broadcast (it would make rank 0's shard the only source of BN stats and
        # observer ranges); the states are equal at init and kept equal by sync_buffers after every epoch
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def sync_buffers(self, model: nn.Module) -> None:
        if self.active:
            _sync_buffers(model, self.world, self.device)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def state_digest(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers by name, dtype, shape and bytes."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        c = t.detach().cpu().contiguous()
        h.update(f"{name}|{c.dtype}|{tuple(c.shape)}".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def _observer_modules(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
    from torchao.quantization.pt2e.observer import ObserverBase

    fakes = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    observers = [m for m in model.modules() if isinstance(m, ObserverBase)]
    return fakes, observers


def _sync_buffers(model: nn.Module, world: int, device: torch.device) -> None:
    """Observer ranges: MIN of min_val, MAX of max_val, then each fake-quant's scale from the shared range.
    Every other floating buffer (BatchNorm running mean/var, also the prepared graph's aten.batch_norm
    buffers, which SyncBatchNorm cannot reach): the mean over ranks."""
    import torch.distributed as dist

    fakes, observers = _observer_modules(model) if _has_torchao() else ([], [])
    owned = {id(b) for m in (*fakes, *observers) for b in m.buffers()}
    for obs in observers:
        for name, op in (("min_val", dist.ReduceOp.MIN), ("max_val", dist.ReduceOp.MAX)):
            t = getattr(obs, name, None)
            if isinstance(t, torch.Tensor) and t.numel():
                _all_reduce_into(t, op, device)
    for fq in fakes:
        _refresh_qparams(fq)
    for t in model.buffers():
        if id(t) not in owned and t.is_floating_point():
            _all_reduce_into(t, dist.ReduceOp.SUM, device)
            t.div_(world)


def _all_reduce_into(t: torch.Tensor, op: Any, device: torch.device) -> None:
    import torch.distributed as dist

    moved = t.detach().to(device)
    dist.all_reduce(moved, op=op)
    t.copy_(moved)


def _refresh_qparams(fq: nn.Module) -> None:
    """A FakeQuantize's scale/zero_point buffers follow its observer; learned (LSQ) scales are
    parameters, kept equal by DDP's gradient all-reduce, and are left alone."""
    scale = getattr(fq, "scale", None)
    if isinstance(scale, nn.Parameter) or not isinstance(scale, torch.Tensor):
        return
    obs = getattr(fq, "activation_post_process", None)
    min_val = getattr(obs, "min_val", None)
    if obs is None or not isinstance(min_val, torch.Tensor) or not min_val.numel():
        return
    zp = getattr(fq, "zero_point", None)
    if not isinstance(zp, torch.Tensor):
        return
    new_scale, new_zp = obs.calculate_qparams()
    scale.resize_(new_scale.shape).copy_(new_scale)
    zp.resize_(new_zp.shape).copy_(new_zp)


def _has_torchao() -> bool:
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        return False
    return True


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def resolve_compute(device_spec: str, precision: str) -> Compute:
    """The training device of this process (cuda:LOCAL_RANK under torchrun) and its precision, checked."""
    local = _env_int("LOCAL_RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else None
    device = resolve_device(device_spec, local)
    check_precision(precision, device)
    return Compute(device, precision)


def join(compute: Compute) -> Ranks:
    """Under torchrun (WORLD_SIZE > 1) join the process group: nccl for CUDA, gloo otherwise."""
    if _env_int("WORLD_SIZE", 1) <= 1:
        return Ranks(device=compute.device)
    import torch.distributed as dist

    backend = "nccl" if compute.device.type == "cuda" else "gloo"
    if compute.device.type == "cuda":
        torch.cuda.set_device(compute.device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), backend, compute.device)


def leave(ranks: Ranks) -> None:
    if ranks.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
