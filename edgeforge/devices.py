"""Where the training stages run and in which precision (the config's ``train:`` section).

``train.device`` is resolved once, at plan time, so a GPU that is not there is one clear error
before any work. Mixed precision is autocast for the float stages (teacher inference and
distillation) only: QAT trains in fp32 with TF32 off and its carrier is converted on the CPU, so
the int8 ranges and weights do not depend on the hardware that trained them beyond fp32 rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _cuda_device(spec: str, local_rank: int | None) -> torch.device:
    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"{spec} is not available on this host ({why})", key="train.device",
                          fix="set train.device: cpu (or auto), or run on a machine with a GPU and a CUDA build of torch")
    if local_rank is not None and ":" in spec:
        raise ConfigError(f"{spec} pins one GPU but torchrun started several processes", key="train.device",
                          fix="set train.device: cuda (each process takes cuda:LOCAL_RANK)")
    index = local_rank if local_rank is not None else int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"cuda:{index} does not exist (this host has {count} GPU(s): cuda:0..cuda:{count - 1})",
                          key="train.device", fix="pick one of them, or start fewer torchrun processes per node")
    return torch.device("cuda", index)


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """``auto | cpu | cuda | cuda:N | mps`` -> a torch.device; ``local_rank`` is set under torchrun."""
    if spec == "auto":
        if torch.cuda.is_available():
            return _cuda_device("cuda", local_rank)
        return torch.device("mps") if _mps_available() and local_rank is None else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if local_rank is not None:
            raise ConfigError("mps trains in one process only", key="train.device",
                              fix="run edgeforge without torchrun, or set train.device: cpu")
        if not _mps_available():
            raise ConfigError("mps is not available on this host (it needs Apple silicon and a macOS build of torch)",
                              key="train.device", fix="set train.device: cpu or auto")
        return torch.device("mps")
    return _cuda_device(spec, local_rank)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 autocast needs a GPU (on the CPU it is slow and has no loss scaling)",
                          key="train.precision", fix="use bf16 on the CPU, or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(device)} has no bf16 support", key="train.precision",
                          fix="use fp16 (loss-scaled) or fp32")


@dataclass(frozen=True)
class Compute:
    """A training device and the autocast precision of the float stages."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def fp32(self) -> Compute:
        return Compute(self.device, "fp32")

    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type

    def record(self) -> dict[str, Any]:
        return {"device": str(self.device), "device_name": self.name(), "precision": self.precision}


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """cuDNN convolutions default to TF32 on Ampere and later: QAT ranges must not depend on that."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``module`` on ``device`` for a while, then back on the CPU (the plan's teacher serves later CPU stages)."""
    module.to(device)
    try:
        yield module
    finally:
        module.cpu()
