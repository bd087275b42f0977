"""Does every int8 artifact compute what the QAT simulation computes, on more than one student family?

    python benchmarks/bench_student_drift.py [--student mobilenet_v3 --student efficientnet_lite]
                                             [--distill-epochs 3] [--qat-epochs 1] [--train-images N]
                                             [--samples 256]

On the Fashion-MNIST sample (its data, its shipped teacher and `samples/fashion_mnist/edgeforge.yaml`;
run `samples/fashion_mnist/prepare.py` first), one `edgeforge build` per student family, through
edgeforge's Python API (`edgeforge.pipeline.build` with config overrides, output under `--out`):
distillation, QAT, then the int8 target of every format (ONNX in onnxruntime, TFLite in LiteRT,
Core ML W8A8 in the reference interpreter, ExecuTorch with XNNPACK), each validated in its own
runtime on the 10,000 test images against the QAT simulation. Students:

- `mobilenet_v3`: the built-in MobileNetV3-Small family (hardswish, squeeze-excite with a
  hardsigmoid gate, 5x5 depthwise), stages 1-4 at width 16;
- `efficientnet_lite`: the built-in EfficientNet-Lite family (relu6, 3x3/5x5 depthwise, no SE),
  stages 1-4 at half Lite0's width.

Prints per runtime: top-1, drift vs the QAT simulation, top-1 agreement; for a target over
`--max-drift` points the build's own layer report verdict and the layer report (`edgeforge debug`)
on `--samples` test images for the formats it reads (ONNX, TFLite). A rerun reuses each build's
stage cache (same config, same code: nothing is retrained).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "samples" / "fashion_mnist" / "edgeforge.yaml"
INT8_TARGETS = {"onnx-cpu-int8": "ONNX int8 (onnxruntime)", "tflite-cpu-int8": "TFLite full int8 (LiteRT, XNNPACK)",
                "coreml-iphone-int8": "Core ML W8A8 (reference interpreter)",
                "executorch-cpu-int8": "ExecuTorch int8 (XNNPACK)"}
# family -> config overrides of the student. 28x28 grey input, stem stride 2 (14x14 after the stem).
STUDENTS: dict[str, dict[str, Any]] = {
    "mobilenet_v3": {"student.family": "mobilenet_v3", "student.width": 16, "student.depth": 4,
                     "student.kwargs": {"stem_stride": 2, "last_channels": 128, "hidden": 128, "dropout": 0.1}},
    "efficientnet_lite": {"student.family": "efficientnet_lite", "student.width": 16, "student.depth": 4,
                          "student.kwargs": {"stem_stride": 2, "last_channels": 128, "dropout": 0.1}},
}


def train_subset(n: int, folder: Path) -> Path:
    """The first ``n`` images of a seeded shuffle of the sample's training split, as an .npz like it."""
    import numpy as np

    path = folder / f"train_{n}.npz"
    if not path.exists():
        data = np.load(CONFIG.parent / "data" / "train.npz")
        keep = np.sort(np.random.default_rng(0).permutation(len(data["y"]))[:n])
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=data["x"][keep], y=data["y"][keep])
    return path.resolve()


def run_build(student: str, args: argparse.Namespace) -> tuple[dict[str, Any], float, list[float]]:
    """(manifest, wall seconds, load averages before and after) of one student's build."""
    from edgeforge.pipeline import build

    overrides = {**STUDENTS[student], "name": f"fashion-mnist-{student.replace('_', '-')}",
                 "output": str((args.out / student).resolve()), "preflight": False,
                 "distill.epochs": args.distill_epochs, "qat.epochs": args.qat_epochs}
    if args.train_images:  # fewer training images, same validation and test splits
        overrides["data.train"] = str(train_subset(args.train_images, args.out))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = build(CONFIG, overrides=overrides, targets=list(INT8_TARGETS))
    wall = time.perf_counter() - t0
    return json.loads(result.manifest_path.read_text()), wall, [load0, os.getloadavg()[0]]


def layer_verdict(student: str, target: str, args: argparse.Namespace) -> str:
    """The layer report's verdict on ``--samples`` test images, or why there is none."""
    from edgeforge.debug import debug_build
    from edgeforge.errors import EdgeforgeError

    try:
        report = debug_build(args.out / student, target, samples=args.samples)
    except EdgeforgeError as exc:
        return f"no layer report: {exc}"
    if args.verbose:
        print(report.to_text(), file=sys.stderr)
    return f"layer report ({args.samples} images, {report.kernels}): {report.verdict()}"


def rows_of(student: str, manifest: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for t in manifest["targets"]:
        m = t.get("metrics") or {}
        row = {"student": student, "target": t["name"], "runtime": INT8_TARGETS.get(t["name"], t["name"]),
               "status": t["status"], "reason": t.get("reason"), "top1": m.get("top1"),
               "drift": m.get("drift_points"), "agreement": m.get("agreement"),
               "max_abs_diff": m.get("max_abs_diff"), "size": m.get("size_bytes"), "why": ""}
        if row["drift"] is not None and abs(row["drift"]) > args.max_drift:
            fd = m.get("first_divergent") or {}
            build_said = f"build's layer report: {fd.get('node') or '-'} ({fd.get('module') or '-'}): {fd.get('metric') or ''}"
            row["why"] = f"{build_said}; {layer_verdict(student, t['name'], args)}"
        elif args.report_all and t["format"] in ("onnx", "tflite") and t.get("artifact"):
            row["why"] = layer_verdict(student, t["name"], args)
        rows.append(row)
    return rows


def _epochs(cfg: dict[str, Any], stage: str) -> str:
    return str(cfg["resolved"][stage]["epochs"])


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def print_table(done: list[tuple[str, dict[str, Any], float, list[float], list[dict[str, Any]]]],
                args: argparse.Namespace) -> None:
    from edgeforge.hostinfo import host_facts

    h = host_facts()
    print(f"host: {h['cpu']['model']} ({h['cpus']} CPUs; int8 flags: {', '.join(h['cpu']['int8_flags']) or 'none'}); "
          "10,000 test images")
    for student, manifest, wall, load, rows in done:
        models = manifest["models"]
        fs, qat = models["float_student"], models["qat_simulation"]
        cfg, n_train = manifest["config"], manifest["data"]["splits"]["train"]["samples"]
        print(f"\n{student}: distill {_epochs(cfg, 'distill')} and QAT {_epochs(cfg, 'qat')} epoch(s) on {n_train:,} "
              f"training images; {fs['parameters']:,} parameters; teacher {_pct(models['teacher']['top1'])}, float student "
              f"{_pct(fs['top1'])}, QAT simulation {_pct(qat['top1'])}; build {wall:.0f} s at load average "
              f"{load[0]:.1f} -> {load[1]:.1f}; exit {manifest['exit_code']}\n")
        print("| runtime | top-1 | drift vs QAT simulation | agreement | max abs logit diff | bytes | first divergent node |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            if r["top1"] is None:
                print(f"| {r['runtime']} | – | – | – | – | – | {r['status']}: {r['reason']} |")
                continue
            print(f"| {r['runtime']} | {_pct(r['top1'])} | {r['drift']:+.2f} pt | {_pct(r['agreement'])} | "
                  f"{r['max_abs_diff']:.3g} | {r['size']:,} | {r['why'] or f'within {args.max_drift} pt'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", action="append", choices=sorted(STUDENTS), help="default: both")
    ap.add_argument("--distill-epochs", type=int, default=3)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--train-images", type=int, help="train on this many of the 55,000 (default: all)")
    ap.add_argument("--max-drift", type=float, default=0.3, help="points; over it, the layer report is run")
    ap.add_argument("--samples", type=int, default=256, help="test images the layer report compares on")
    ap.add_argument("--report-all", action="store_true", help="layer report for every ONNX/TFLite target")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "student_drift", help="build folders go here")
    ap.add_argument("--table", type=Path, help="also write the table here after every build")
    ap.add_argument("--verbose", action="store_true", help="print each layer report in full (stderr)")
    args = ap.parse_args()
    done = []
    for student in args.student or list(STUDENTS):
        manifest, wall, load = run_build(student, args)
        done.append((student, manifest, wall, load, rows_of(student, manifest, args)))
        if args.table:
            with contextlib.redirect_stdout(io.StringIO()) as buf:
                print_table(done, args)
            args.table.write_text(buf.getvalue())
    print_table(done, args)


if __name__ == "__main__":
    main()
