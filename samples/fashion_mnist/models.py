"""The Fashion-MNIST sample's teacher: a plain 3-stage CNN for 28x28 grey images."""

from __future__ import annotations

import torch
from torch import nn


class FashionTeacher(nn.Module):
    """Conv-BN-ReLU stages at 28, 14 and 7 pixels, then a dropout MLP head.

    Sized to train to about 92% on two CPU cores in a few minutes; the head's hidden layer holds
    most of the parameters so that a MobileNet-style student is easily 10x smaller.
    """

    def __init__(self, width: int = 32, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            stage(1, width), nn.MaxPool2d(2),                  # 28 -> 14
            stage(width, width * 2), nn.MaxPool2d(2),          # 14 -> 7
            stage(width * 2, width * 4), nn.MaxPool2d(2),      # 7 -> 3
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(width * 4 * 9, hidden), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def teacher(width: int = 32, hidden: int = 256, num_classes: int = 10) -> nn.Module:
    return FashionTeacher(width, hidden, num_classes)
