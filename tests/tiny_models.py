"""Tiny models and data built in code for the tests (seconds to train on 2 cores)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TinyTeacher(nn.Module):
    def __init__(self, num_classes: int = 4, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def teacher(num_classes: int = 4, width: int = 24) -> nn.Module:
    return TinyTeacher(num_classes, width)


def make_patterns(n: int, seed: int, num_classes: int = 4, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright bar at one of four positions/orientations, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    x = rng.normal(0, 0.25, (n, 1, size, size)).astype(np.float32)
    for i, k in enumerate(y):
        if k == 0:
            x[i, 0, 1:3, :] += 1.0
        elif k == 1:
            x[i, 0, -3:-1, :] += 1.0
        elif k == 2:
            x[i, 0, :, 1:3] += 1.0
        else:
            x[i, 0, :, -3:-1] += 1.0
    return x, y.astype(np.int64)


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                   batch_size: int, shuffle: bool) -> nn.Module:
    """A plain cross-entropy fit with Adam (shuffled with the global torch RNG when asked); returns it in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x)) if shuffle else torch.arange(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def train_teacher(x: np.ndarray, y: np.ndarray, epochs: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = teacher(int(y.max()) + 1)
    return fit_classifier(m, torch.from_numpy(x), torch.from_numpy(y), epochs=epochs, lr=1e-2, batch_size=32,
                          shuffle=False)


class OutlierStudent(nn.Module):
    """conv-ReLU, conv-ReLU, mean, linear; ``mid.0`` is sensitive to int8 by construction.

    The stem's last channel is dead (zero weights, bias -5: ReLU gives exactly 0 and no gradient), and
    ``mid.0`` reads it with weights of 200. They change nothing in float, but per-channel int8 scales of
    200 / 127 round every real weight of ``mid.0`` to zero. ``outlier_head`` does the same to half of
    ``head``'s classes (``mid.0``'s last channel dead, read by them with weights of 200).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 8, outlier_head: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, num_classes)
        with torch.no_grad():
            self.stem[0].weight[-1].zero_()
            self.stem[0].bias[-1] = -5.0
            self.mid[0].weight[:, -1] = 200.0
            if outlier_head:
                self.mid[0].weight[-1].zero_()
                self.mid[0].bias[-1] = -5.0
                self.head.weight[: num_classes // 2, -1] = 200.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.stem(x)).mean((2, 3)))


def outlier_student(num_classes: int = 4) -> nn.Module:
    return OutlierStudent(num_classes=num_classes)


class TextTeacher(nn.Module):
    """A bag-of-words text classifier: token embedding, mean over the unmasked tokens, a linear head."""

    def __init__(self, vocab_size: int, num_classes: int = 4, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled)


def text_teacher(vocab_size: int = 64, num_classes: int = 4) -> nn.Module:
    return TextTeacher(vocab_size, num_classes)


def make_documents(n: int, seed: int, num_classes: int = 4, words: int = 40) -> list[tuple[str, int]]:
    """Class k's documents hold its keyword ``key{k}`` a few times among random filler words."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = i % num_classes
        body = [f"w{j}" for j in rng.integers(0, words, rng.integers(4, 14))]
        for _ in range(rng.integers(1, 3)):
            body.insert(int(rng.integers(0, len(body) + 1)), f"key{k}")
        docs.append((" ".join(body), k))
    return docs
