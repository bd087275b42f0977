"""Training-time augmentation on a batch tensor, reproducible from a per-batch seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, seed: int) -> torch.Tensor:
    """Random left-right flips and padded random crops of N x C x H x W images.

    The seed comes from the training loop's generator, so the same epoch of a resumed run (or of
    any worker count) sees the same images.
    """
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    if cfg.hflip:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    p = cfg.crop_padding
    if p:
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g).tolist()
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g).tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return x
