"""Prepare the Fashion-MNIST sample: read Debian's IDX files, write the splits, train the teacher.

The data is Zalando's Fashion-MNIST (60,000 training and 10,000 test 28x28 grey images of ten
kinds of clothing) as Debian packages it: `apt-get install dataset-fashion-mnist` puts the four
IDX files (gzipped) under /usr/share/datasets/fashion-mnist. Writes data/{train,val,test}.npz
(uint8 images; the last 5,000 of a seeded shuffle of the training set are the validation split)
and teacher.pt next to this file. Training is seeded and deterministic for a given thread count
on a given CPU kind; the content hash it prints is the one to compare.

    python samples/fashion_mnist/prepare.py [--epochs 4] [--seed 0] [--threads 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
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

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
VAL_SIZE = 5000


class MissingData(SystemExit):
    pass


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise MissingData(f"error: {folder / (stem + '.gz')} not found: install the data with "
                      f"`sudo apt-get install dataset-fashion-mnist` (or pass --data-dir to a folder with the IDX files)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian magic, dims, then uint8 data), gzipped or not."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise SystemExit(f"error: {path} is not an unsigned-byte IDX file (bad magic); reinstall dataset-fashion-mnist")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SystemExit(f"error: {path} is truncated ({data.size} of {int(np.prod(dims))} bytes); reinstall dataset-fashion-mnist")
    return data.reshape(dims)


def load_splits(folder: Path, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    arrays = {k: (read_idx(_find(folder, xi)), read_idx(_find(folder, yi)).astype(np.int64)) for k, (xi, yi) in FILES.items()}
    x, y = arrays["train"]
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, va = perm[:-VAL_SIZE], perm[-VAL_SIZE:]
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": arrays["test"]}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors (torch.save files carry a random serialization id, so not the file)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _as_float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]


def _step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_teacher(splits: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_teacher()
    x, y = _as_float(splits["train"][0]), torch.from_numpy(splits["train"][1])
    xv, yv = _as_float(splits["val"][0]), torch.from_numpy(splits["val"][1])
    bs = 128
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * ((len(x) + bs - 1) // bs))
    best, best_state = -1.0, model.state_dict()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5  # clothes are left-right symmetric
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            _step(F.cross_entropy(model(xb), y[idx], label_smoothing=0.05), opt, sched)
        acc = _top1(model.eval(), xv, yv)
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"teacher epoch {epoch + 1}/{epochs}: val top-1 {acc:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)
    model.load_state_dict(best_state)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the trained weights depend on it; 1 is bit-exact across runs)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--force", action="store_true", help="retrain even if teacher.pt exists")
    args = ap.parse_args()
    try:
        splits = load_splits(args.data_dir, args.seed)
    except MissingData as e:
        print(e.code, file=sys.stderr)
        raise SystemExit(2) from None
    (HERE / "data").mkdir(exist_ok=True)
    for name, (x, y) in splits.items():
        np.savez_compressed(HERE / "data" / f"{name}.npz", x=x, y=y)
    print("splits: " + ", ".join(f"{k} {len(v[1]):,}" for k, v in splits.items()) + f" -> {HERE / 'data'}", flush=True)
    ckpt = HERE / "teacher.pt"
    if ckpt.exists() and not args.force:
        print(f"teacher: {ckpt} exists (use --force to retrain)")
        return
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    model = train_teacher(splits, args.epochs, args.seed)
    acc = _top1(model, _as_float(splits["test"][0]), torch.from_numpy(splits["test"][1]))
    tmp = ckpt.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    n = sum(p.numel() for p in model.parameters())
    print(f"teacher: {n:,} parameters, test top-1 {acc:.4f}, trained in {time.perf_counter() - t0:.0f} s, "
          f"weights sha256 {state_digest(model.state_dict())} -> {ckpt}")


if __name__ == "__main__":
    main()
