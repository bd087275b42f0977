"""Built-in student families, registered by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import Registry
from .families.efficientnet import efficientnet_lite
from .families.mobilenet import mobilenet_v2, mobilenet_v3
from .families.transformer import transformer

StudentBuilder = Callable[..., nn.Module]
STUDENTS: Registry[StudentBuilder] = Registry("student family")


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )


class ConvNet(nn.Module):
    """Stem conv, then ``depth`` stages of conv-BN-ReLU (stride 2, width doubling), mean pool, linear.

    Every op maps to an int8 kernel in onnxruntime, LiteRT and Core ML; global pooling is a mean
    over H, W (not flatten) so the exported graphs accept any batch size.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width)
        stages = []
        c = width
        for _ in range(depth):
            stages.append(_conv_bn_relu(c, c * 2, stride=2))
            c *= 2
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        return self.classifier(x.mean((2, 3)))


class SeparableNet(nn.Module):
    """MobileNet-style: stem, then depthwise-separable blocks; a residual add where shapes allow."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width)
        blocks = []
        c = width
        for i in range(depth):
            stride = 2 if i % 2 == 0 else 1
            cout = c * 2 if stride == 2 else c
            blocks.append(_Separable(c, cout, stride))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))


class _Separable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = _conv_bn_relu(cin, cin, stride=stride, groups=cin)
        self.pw = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return self.act(x + y if self.residual else y)


STUDENTS.add("convnet", ConvNet)
STUDENTS.add("separable", SeparableNet)
STUDENTS.add("mobilenet_v3", mobilenet_v3)
STUDENTS.add("mobilenet_v2", mobilenet_v2)
STUDENTS.add("transformer", transformer)  # token inputs: see edgeforge.inputs.token_inputs
STUDENTS.add("efficientnet_lite", efficientnet_lite)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
