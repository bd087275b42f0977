"""Prepare the digits sample: split scikit-learn's bundled handwritten digits and train the teacher.

The data ships inside scikit-learn (sklearn.datasets.load_digits: 1,797 8x8 grey images of the
digits 0-9, from the UCI optical-recognition set); nothing is downloaded. Writes
data/{train,val,test}.npz and teacher.pt next to this file. Deterministic for a given seed.

    python samples/digits/prepare.py [--epochs 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import teacher as build_teacher  # noqa: E402


def split_digits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8 in [0, 1]
    y = d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.45, stratify=y, random_state=seed)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=2 / 3, stratify=y_rest, random_state=seed)
    return {"train": (x_tr, y_tr), "val": (x_val, y_val), "test": (x_te, y_te)}


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel: the teacher's only augmentation."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_teacher(splits: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_teacher()
    x, y = torch.from_numpy(splits["train"][0]), torch.from_numpy(splits["train"][1])
    xv, yv = torch.from_numpy(splits["val"][0]), torch.from_numpy(splits["val"][1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(shift(x[idx], g)), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="retrain even if teacher.pt exists")
    args = ap.parse_args()
    splits = split_digits(args.seed)
    (HERE / "data").mkdir(exist_ok=True)
    for name, (x, y) in splits.items():
        np.savez_compressed(HERE / "data" / f"{name}.npz", x=x, y=y)
    ckpt = HERE / "teacher.pt"
    if ckpt.exists() and not args.force:
        print(f"teacher: {ckpt} exists (use --force to retrain)")
        return
    t0 = time.perf_counter()
    model = train_teacher(splits, args.epochs, args.seed)
    xt, yt = (torch.from_numpy(a) for a in splits["test"])
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    tmp = ckpt.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    n = sum(p.numel() for p in model.parameters())
    print(f"teacher: {n:,} parameters, test top-1 {acc:.4f}, trained in {time.perf_counter() - t0:.0f} s -> {ckpt}")


if __name__ == "__main__":
    main()
