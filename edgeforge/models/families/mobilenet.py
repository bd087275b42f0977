"""MobileNetV2- and MobileNetV3-style students for small inputs.

``width`` is the stem's channel count; every layer scales by ``width / stem of the original``
(32 for V2, 16 for V3), rounded to a multiple of ``divisor``. ``depth`` is the number of stages
kept from the original table (each stage but V3's 4th and V2's 1st/5th/7th halves the resolution).
Global pooling is ``x.mean((2, 3))``, never flatten, so exported graphs accept any batch size.
Module names follow torchvision (``features.3.se.gate``) so float-op reports read familiarly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigError


def make_divisible(v: float, divisor: int) -> int:
    """Round to a multiple of ``divisor`` without losing more than 10% (the MobileNet rule)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


@dataclass(frozen=True)
class Block:
    kernel: int
    expand: float  # expansion ratio (hidden / input channels)
    out: int
    se: bool
    act: str  # relu | hardswish | relu6
    stride: int
    stage: int


# MobileNetV3-Small (Howard et al. 2019, table 2): kernel, expansion, out, SE, activation, stride.
V3_SMALL = [
    Block(3, 1, 16, True, "relu", 2, 1),
    Block(3, 4.5, 24, False, "relu", 2, 2), Block(3, 88 / 24, 24, False, "relu", 1, 2),
    Block(5, 4, 40, True, "hardswish", 2, 3), Block(5, 6, 40, True, "hardswish", 1, 3),
    Block(5, 6, 40, True, "hardswish", 1, 3),
    Block(5, 3, 48, True, "hardswish", 1, 4), Block(5, 3, 48, True, "hardswish", 1, 4),
    Block(5, 6, 96, True, "hardswish", 2, 5), Block(5, 6, 96, True, "hardswish", 1, 5),
    Block(5, 6, 96, True, "hardswish", 1, 5),
]

# MobileNetV2 (Sandler et al. 2018, table 2): expansion t, out c, repeats n, stride s.
_V2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
V2 = [Block(3, t, c, False, "relu6", s if i == 0 else 1, stage)
      for stage, (t, c, n, s) in enumerate(_V2_TABLE, 1) for i in range(n)]


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}[name]()


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: mean over H, W -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid gate -> x * gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise -> (SE) -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, b: Block, cout: int, divisor: int) -> None:
        super().__init__()
        hidden = make_divisible(cin * b.expand, divisor)
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvBNAct(cin, hidden, 1, act=b.act))
        layers.append(ConvBNAct(hidden, hidden, b.kernel, b.stride, groups=hidden, act=b.act))
        self.pre = nn.Sequential(*layers)
        self.se = SqueezeExcite(hidden, make_divisible(hidden / 4, divisor)) if b.se else None
        self.project = ConvBNAct(hidden, cout, 1)
        self.residual = b.stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


def _select(table: list[Block], family: str, depth: int, max_blocks: int | None) -> list[Block]:
    stages = max(b.stage for b in table)
    if depth > stages:
        raise ConfigError(f"student.depth: {family} has {stages} stages, got depth {depth}; use 1..{stages}")
    if max_blocks is not None and max_blocks < 1:
        raise ConfigError(f"student.kwargs.max_blocks: must be >= 1, got {max_blocks}")
    kept, per_stage = [], dict[int, int]()
    for b in table:
        if b.stage <= depth and per_stage.get(b.stage, 0) < (max_blocks or len(table)):
            kept.append(b)
            per_stage[b.stage] = per_stage.get(b.stage, 0) + 1
    return kept


class MobileNet(nn.Module):
    """stem -> inverted residual blocks -> 1x1 conv -> mean over H, W -> (hidden linear) -> classifier."""

    def __init__(self, in_channels: int, num_classes: int, blocks: list[Block], *, stem: int, stem_stride: int,
                 act: str, mult: float, divisor: int, last: int, hidden: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(in_channels, stem, 3, stem_stride, act=act)]
        c = stem
        for b in blocks:
            cout = make_divisible(b.out * mult, divisor)
            layers.append(InvertedResidual(c, b, cout, divisor))
            c = cout
        layers.append(ConvBNAct(c, last, 1, act=act))
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        if hidden:
            head += [nn.Linear(last, hidden), _act(act)]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden or last, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def mobilenet_v3(in_channels: int, num_classes: int, width: int = 16, depth: int = 5, *, stem_stride: int = 2,
                 divisor: int = 8, max_blocks: int | None = None, se: bool = True, last_channels: int | None = None,
                 hidden: int | None = None, dropout: float = 0.2) -> nn.Module:
    """MobileNetV3-Small-style. ``width=16, depth=5`` is MobileNetV3-Small (2.5 M parameters at 1000 classes).

    kwargs: ``stem_stride`` (use 1 for 28x28 inputs to keep resolution), ``divisor``, ``max_blocks``
    per stage, ``se``, ``last_channels`` (default 6x the last block), ``hidden`` (default 1024 x
    width/16; 0 drops the hidden layer), ``dropout``.
    """
    mult = width / 16
    blocks = [Block(b.kernel, b.expand, b.out, b.se and se, b.act, b.stride, b.stage)
              for b in _select(V3_SMALL, "mobilenet_v3", depth, max_blocks)]
    c_last = make_divisible(blocks[-1].out * mult, divisor)
    return MobileNet(in_channels, num_classes, blocks, stem=make_divisible(width, divisor), stem_stride=stem_stride,
                     act="hardswish", mult=mult, divisor=divisor, last=last_channels or 6 * c_last,
                     hidden=make_divisible(1024 * mult, divisor) if hidden is None else hidden, dropout=dropout)


def mobilenet_v2(in_channels: int, num_classes: int, width: int = 32, depth: int = 7, *, stem_stride: int = 2,
                 divisor: int = 8, max_blocks: int | None = None, last_channels: int | None = None,
                 dropout: float = 0.2) -> nn.Module:
    """MobileNetV2-style (relu6, linear bottlenecks). ``width=32, depth=7`` is MobileNetV2 1.0.

    kwargs: ``stem_stride``, ``divisor``, ``max_blocks`` per stage, ``last_channels`` (default
    1280 x max(1, width/32), as in the paper), ``dropout``.
    """
    mult = width / 32
    blocks = _select(V2, "mobilenet_v2", depth, max_blocks)
    last = last_channels or make_divisible(1280 * max(1.0, mult), divisor)
    return MobileNet(in_channels, num_classes, blocks, stem=make_divisible(width, divisor), stem_stride=stem_stride,
                     act="relu6", mult=mult, divisor=divisor, last=last, hidden=0, dropout=dropout)
