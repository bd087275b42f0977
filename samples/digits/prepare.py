"""Prepare the digits sample: split scikit-learn's bundled handwritten digits and check the teacher.

The data ships inside scikit-learn (sklearn.datasets.load_digits: 1,797 8x8 grey images of the
digits 0-9, from the UCI optical-recognition set); nothing is downloaded. Writes
data/{train,val,test}.npz next to this file; the split is exact on every machine (checked against
DATA_SHA256).

The teacher is shipped (teacher.pt, a weights-only state_dict) and verified against TEACHER_SHA256
rather than retrained: float training is not bit-exact across x86 CPUs (oneDNN, MKL and ATen pick
AVX2 / AVX-512 kernels with different summation orders), so a retrained teacher differs per machine
and so would every number compared against the committed baseline. ``--retrain`` trains a new one
(then rebuild the baseline from it).

    python samples/digits/prepare.py [--retrain [--epochs 60] [--seed 0]]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import teacher as build_teacher  # noqa: E402

from edgeforge.progress import Progress  # noqa: E402

# What the split and the shipped teacher.pt hash to (the data digest is the one manifest.json records).
DATA_SHA256 = "0ecbf03a52ecfca157adf25d363dcca0efb85a19b206d3a1179a01fe1a80f678"
TEACHER_SHA256 = "48c735446e60a03d49cc5a29417822ac1f62ffea024229aa96141d03798cb30f"


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
    progress = Progress("teacher", epochs)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            progress.tick(i // 64, (len(x) + 63) // 64)
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(shift(x[idx], g)), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        progress.epoch(epoch + 1, loss=float(loss), val_top1=acc)
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def data_digest(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The digest edgeforge's data loader records (edgeforge.data.DataBundle.digest)."""
    outer = hashlib.sha256()
    for name in ("train", "val", "test"):
        x, y = splits[name]
        inner = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes())
        outer.update(inner.hexdigest().encode())
    return outer.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def retrain(splits: dict[str, tuple[np.ndarray, np.ndarray]], ckpt: Path, epochs: int, seed: int) -> None:
    t0 = time.perf_counter()
    model = train_teacher(splits, epochs, seed)
    xt, yt = (torch.from_numpy(a) for a in splits["test"])
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    tmp = ckpt.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    n = sum(p.numel() for p in model.parameters())
    print(f"teacher: {n:,} parameters, test top-1 {acc:.4f}, trained in {time.perf_counter() - t0:.0f} s -> {ckpt} "
          f"(sha256 {file_digest(ckpt)[:12]}; the committed baseline was built from the shipped teacher "
          f"{TEACHER_SHA256[:12]}: rebuild it before `edgeforge check`)")


def verify_teacher(ckpt: Path) -> int:
    if not ckpt.is_file():
        print(f"teacher: {ckpt} is missing; restore the shipped one with `git checkout -- {ckpt.name}` "
              "(run in samples/digits) or train a new one with --retrain", file=sys.stderr)
        return 1
    got = file_digest(ckpt)
    if got != TEACHER_SHA256:
        print(f"teacher: {ckpt} has sha256 {got[:12]}..., not the shipped {TEACHER_SHA256[:12]}...; the committed "
              f"baseline does not apply to it: restore it with `git checkout -- {ckpt.name}`, or keep it and "
              "rebuild the baseline", file=sys.stderr)
        return 1
    print(f"teacher: {ckpt} verified (sha256 {got[:12]}..., the shipped checkpoint)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain", "--force", action="store_true",
                    help="train a new teacher.pt instead of verifying the shipped one (differs per CPU)")
    ap.add_argument("--epochs", type=int, default=60, help="teacher epochs with --retrain")
    ap.add_argument("--seed", type=int, default=0, help="split and training seed (the shipped files use 0)")
    args = ap.parse_args()
    splits = split_digits(args.seed)
    (HERE / "data").mkdir(exist_ok=True)
    for name, (x, y) in splits.items():
        np.savez_compressed(HERE / "data" / f"{name}.npz", x=x, y=y)
    digest = data_digest(splits)
    same = "the committed baseline's data" if digest == DATA_SHA256 else f"NOT the baseline's {DATA_SHA256[:12]}..."
    print(f"data: {', '.join(f'{k} {len(v[1])}' for k, v in splits.items())} -> {HERE / 'data'} "
          f"(sha256 {digest[:12]}..., {same})")
    ckpt = HERE / "teacher.pt"
    if args.retrain:
        retrain(splits, ckpt, args.epochs, args.seed)
        return 0
    return verify_teacher(ckpt)


if __name__ == "__main__":
    sys.exit(main())
