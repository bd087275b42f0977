"""The carrier: what flows from the training stages into every exporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .inputs import InputSpec, example_inputs, image_inputs


@dataclass
class Carrier:
    """The float student, its int8 QAT graph, and what exporters need to know about them.

    ``quantized`` is the converted PT2E graph: quantize/dequantize ops around conv/linear with the
    scales learned during QAT, BN folded. Exporters that emit int8 read the scales from it and never
    re-calibrate; ``calibration`` is here only for exporters asked for an explicit PTQ comparison.

    ``inputs`` are the model's named, typed inputs in forward-argument order (``edgeforge.inputs``);
    left empty, it is the single float32 input ``input_shape`` describes (image models).
    """

    float_model: nn.Module
    quantized: torch.fx.GraphModule | None
    input_shape: tuple[int, ...]  # C, H, W (the first input's shape when there are several)
    num_classes: int
    class_names: list[str]
    calibration: torch.Tensor | tuple[torch.Tensor, ...]
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[InputSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = image_inputs(self.input_shape)

    def example(self, batch: int = 2) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One example tensor for a single-input model, a tuple in signature order for several."""
        ex = self.examples(batch)
        return ex[0] if len(ex) == 1 else ex

    def examples(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        """Example inputs for ``batch`` rows, always a tuple (what torch.export and converters take)."""
        return example_inputs(self.inputs, batch)
