"""The digits sample's teacher: a wide 3-stage CNN (about 0.5 M parameters) for 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn


class DigitsTeacher(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            )

        self.stage1 = block(1, width)                                      # 8x8
        self.stage2 = nn.Sequential(nn.MaxPool2d(2), block(width, width * 2))   # 4x4
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), block(width * 2, width * 2))  # 2x2
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(width * 2, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(x.mean((2, 3)))


def teacher(width: int = 64, num_classes: int = 10) -> nn.Module:
    return DigitsTeacher(width, num_classes)
