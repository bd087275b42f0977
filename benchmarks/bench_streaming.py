"""Streamed data: peak memory stays flat as the data set grows, and how fast the streamed loader feeds training.

    python benchmarks/bench_streaming.py [--images 20000] [--size 32] [--workers 2] [--epochs 1]

Writes an image folder of ``--images`` generated RGB PNGs (10 classes; each class a coloured bar at its
own position on noise) and one twice that size, plus the same images as .npy memory maps, then runs
distillation (edgeforge's ``distill``: a small CNN teacher into the built-in ``convnet`` student, teacher
logits computed once by streaming the split) in a fresh process per setting and reports:

- peak RSS of the training process and of its loader workers, at N and 2N images (streamed image folder
  and streamed memory map): flat means within 10 %;
- training samples/s of each streamed source against the in-memory path on the same images (goal 0.8x),
  measured in one process, round-robin over the sources (``--rounds``), median per source, so a change
  in the host's load hits every source alike.

Each peak-RSS setting runs in its own process (peak RSS is per process), one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 96, (n, size, size, 3), dtype=np.uint8)
    band = max(1, size // 10)
    for k in range(10):
        rows = np.nonzero(y == k)[0]
        x[rows, k * band : (k + 1) * band, :, k % 3] = 255
    return x, y


def write_folder(root: Path, n: int, size: int, seed: int) -> None:
    from PIL import Image

    x, y = make_images(n, size, seed)
    for k in range(10):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(x[i]).save(root / f"c{y[i]}" / f"{i:06d}.png")
    (root.parent / f"{root.name}-npy").mkdir(exist_ok=True)
    np.save(root.parent / f"{root.name}-npy" / "x.npy", x.transpose(0, 3, 1, 2).copy())
    np.save(root.parent / f"{root.name}-npy" / "y.npy", y)


def _split(source: str, folder: Path, args: argparse.Namespace) -> Any:
    from edgeforge.config import DataConfig
    from edgeforge.data.sources import load_image_folder, load_npy

    if source == "npy":
        cfg = DataConfig(kind="npy", train="t", val="v", test="s", stream=True, workers=args.workers)
        return load_npy("train", folder.parent / f"{folder.name}-npy", cfg), cfg.workers
    cfg = DataConfig(kind="image_folder", train="t", val="v", test="s", image_size=(args.size, args.size),
                     stream=source == "folder", workers=args.workers if source == "folder" else 0)
    return load_image_folder("train", folder, cfg, None)[0], cfg.workers


def _distill_once(train: Any, workers: int, epochs: int) -> float:
    """samples/s of ``epochs`` of distillation over ``train`` (the teacher's logits computed first, not timed)."""
    import torch

    from edgeforge.config import DistillConfig
    from edgeforge.data import DataBundle
    from edgeforge.distill import distill
    from edgeforge.models.students import STUDENTS
    from edgeforge.training import TrainContext

    val = train.subset(torch.arange(256), "val")
    data = DataBundle(train, val, val, 10, [f"c{k}" for k in range(10)], workers)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    student = STUDENTS.get("convnet")(3, 10, width=16, depth=2)
    out = distill(teacher, student, data, DistillConfig(epochs=epochs, batch_size=128, lr=0.01), augmented=False,
                  show_progress=False, ctx=TrainContext(workers=workers))
    return out.result.samples_per_second


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One peak-RSS setting in this (fresh) process: load, distil, report throughput and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    train, workers = _split(args.source, Path(args.folder), args)
    speed = _distill_once(train, workers, args.epochs)
    return {"source": args.source, "images": len(train), "samples_per_second": speed,
            "peak_rss_mb": _own_peak_mb(),
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _own_peak_mb() -> float:
    """This process's peak resident memory since exec (VmHWM). ``ru_maxrss`` would not do: Linux carries
    the forking parent's resident size over exec into it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(folder: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """samples/s per source, round-robin in this process."""
    import torch

    torch.set_num_threads(args.threads)
    splits = {s: _split(s, folder, args) for s in ("memory", "npy", "folder")}
    out: dict[str, list[float]] = {s: [] for s in splits}
    for _ in range(args.rounds):
        for source, (train, workers) in splits.items():
            out[source].append(_distill_once(train, workers, 1))
    return out


def run(folder: Path, source: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--folder", str(folder), "--source", source, "--size", str(args.size),
           "--workers", str(args.workers), "--epochs", str(args.epochs), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT,
                          env={**os.environ, "EDGEFORGE_CACHE_DIR": str(folder.parent / "cache")})
    if proc.returncode:
        raise SystemExit(f"{source} on {folder.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="the smaller data set for peak RSS (and 2x that)")
    ap.add_argument("--speed-images", type=int, default=5000, help="images for the samples/s comparison")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--source", choices=["folder", "npy"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="edgeforge-stream-") as d:
        folder = Path(d) / "speed"
        write_folder(folder, args.speed_images, args.size, seed=1)
        rates = speed(folder, args)
        rows = []
        for n in (args.images, 2 * args.images):
            folder = Path(d) / f"images-{n}"
            t0 = time.perf_counter()
            write_folder(folder, n, args.size, seed=n)
            print(f"wrote {n} PNGs ({args.size}x{args.size} RGB) in {time.perf_counter() - t0:.0f} s", flush=True)
            for source in ("folder", "npy"):
                rows.append(run(folder, source, args))
                print(json.dumps(rows[-1]), flush=True)
    report(rows, rates, args)


def report(rows: list[dict[str, Any]], rates: dict[str, list[float]], args: argparse.Namespace) -> None:
    import statistics

    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end; workers {args.workers}, "
          f"torch threads {args.threads}")
    mem = statistics.median(rates["memory"])
    print(f"samples/s, {args.speed_images} images, median of {args.rounds} round-robin rounds:")
    for source, r in rates.items():
        med = statistics.median(r)
        print(f"  {source:<7} {med:8.0f}  ({med / mem:.2f}x in-memory; rounds {', '.join(f'{v:.0f}' for v in r)})")
    print(f"{'source':<8} {'images':>7} {'peak RSS MB':>12} {'workers MB':>11}")
    for r in rows:
        print(f"{r['source']:<8} {r['images']:>7} {r['peak_rss_mb']:>12.0f} {r['workers_peak_rss_mb']:>11.0f}")
    for source in ("folder", "npy"):
        a, b = (r for r in rows if r["source"] == source)
        growth = (b["peak_rss_mb"] + b["workers_peak_rss_mb"]) / (a["peak_rss_mb"] + a["workers_peak_rss_mb"]) - 1
        print(f"{source}: peak RSS (process + workers) {growth:+.1%} when the data doubles")


if __name__ == "__main__":
    main()
