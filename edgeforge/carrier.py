"""The carrier: what flows from the training stages into every exporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Carrier:
    """The float student, its int8 QAT graph, and what exporters need to know about them.

    ``quantized`` is the converted PT2E graph: quantize/dequantize ops around conv/linear with the
    scales learned during QAT, BN folded. Exporters that emit int8 read the scales from it and never
    re-calibrate; ``calibration`` is here only for exporters asked for an explicit PTQ comparison.
    """

    float_model: nn.Module
    quantized: torch.fx.GraphModule | None
    input_shape: tuple[int, ...]  # C, H, W
    num_classes: int
    class_names: list[str]
    calibration: torch.Tensor
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)

    def example(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)
