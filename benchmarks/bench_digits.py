"""Benchmarks on the digits sample, measured side by side in one run (not part of CI).

    python benchmarks/bench_digits.py [--runs 2000] [--epochs 10]

Prints one Markdown table:
- the sample build's wall time (fresh output folder, nothing cached);
- retention and compression of the int8 ONNX artifact;
- its top-1 against onnxruntime's own quantize_static PTQ (QDQ, per-channel, int8, same calibration
  images) of the same float student;
- onnxruntime int8 / fp32 latency at batch 1, 1 thread, sessions timed interleaved;
- distill-stage samples/s against a plain hand-written KD loop on the same student and data.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "samples" / "digits" / "edgeforge.yaml"


def run_build(out: Path) -> tuple[float, dict]:
    env = {**os.environ, "CI": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeforge", "build", str(CONFIG), "--set", f"output={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sample build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads((out / "manifest.json").read_text())


def ort_ptq(fp32_path: Path, calib: np.ndarray, out_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def session(path: Path, threads: int = 1):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def top1(sess, x: np.ndarray, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    out = sess.run(None, {"input": x})[0]
    return float((out.argmax(1) == y).mean())


def interleaved_latency(sessions: dict[str, object], x: np.ndarray, runs: int, warmup: int = 50) -> dict[str, float]:
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, {"input": x})  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"input": x})  # type: ignore[attr-defined]
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def distill_throughput(epochs: int) -> tuple[float, float]:
    from edgeforge.config import load_config
    from edgeforge.distill import distill
    from edgeforge.pipeline import plan_build

    lc = load_config(CONFIG, {"distill.epochs": epochs})
    plan = plan_build(lc)
    cfg = lc.config.distill
    student0 = copy.deepcopy(plan.student)
    out = distill(plan.teacher, copy.deepcopy(student0), plan.data, cfg, augmented=False, show_progress=False)
    ours = out.result.samples_per_second

    # The plain loop people write first: teacher forward on every batch, no cache, no eval.
    student = copy.deepcopy(student0).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = plan.data.train.x, plan.data.train.y
    T, a = cfg.temperature, cfg.alpha
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            with torch.no_grad():
                t_logits = plan.teacher(x[idx])
            s_logits = student(x[idx])
            soft = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
            loss = a * soft + (1 - a) * F.cross_entropy(s_logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    plain = epochs * len(x) / (time.perf_counter() - t0)
    return ours, plain


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    if not (ROOT / "samples" / "digits" / "teacher.pt").exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "digits" / "prepare.py")], check=True)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "digits"
        wall, m = run_build(out)
        t = {e["name"]: e for e in m["targets"]}
        fp32, int8 = t["onnx-cpu-fp32"], t["onnx-cpu-int8"]
        fp32_path, int8_path = out / fp32["artifact"]["path"], out / int8["artifact"]["path"]

        from edgeforge.config import load_config
        from edgeforge.data import calibration_split, load_data

        lc = load_config(CONFIG)
        data = load_data(lc)
        calib = calibration_split(data, lc.calibration()).x.numpy()
        xt, yt = data.test.x.numpy(), data.test.y.numpy()
        ptq_path = Path(tmp) / "ptq.onnx"
        ort_ptq(fp32_path, calib, ptq_path)
        s_fp32, s_int8, s_ptq = session(fp32_path), session(int8_path), session(ptq_path)
        acc = {"fp32": top1(s_fp32, xt, yt), "int8 (edgeforge QAT)": top1(s_int8, xt, yt),
               "int8 (ORT quantize_static PTQ)": top1(s_ptq, xt, yt)}
        lat = interleaved_latency({"fp32": s_fp32, "int8": s_int8, "ptq": s_ptq}, xt[:1], args.runs)
        ptq_size = ptq_path.stat().st_size
    ours, plain = distill_throughput(args.epochs)
    teacher_top1 = m["models"]["teacher"]["top1"]
    rows = [
        ("sample build wall time (fresh, 2 targets)", f"{wall:.1f} s"),
        ("teacher top-1 / parameters / bytes", f"{teacher_top1 * 100:.2f}% / {m['models']['teacher']['parameters']:,} / {m['models']['teacher']['bytes']:,}"),
        ("float student top-1 / parameters", f"{m['models']['float_student']['top1'] * 100:.2f}% / {m['models']['float_student']['parameters']:,}"),
        ("QAT simulation top-1", f"{m['models']['qat_simulation']['top1'] * 100:.2f}%"),
        ("ONNX int8 (QAT) top-1 in onnxruntime", f"{acc['int8 (edgeforge QAT)'] * 100:.2f}%"),
        ("ONNX int8 retention vs teacher", f"{int8['metrics']['retention']:.4f}"),
        ("ONNX int8 drift vs QAT simulation", f"{int8['metrics']['drift_points']:+.2f} pt (agreement {int8['metrics']['agreement'] * 100:.2f}%)"),
        ("ONNX int8 size / compression vs teacher", f"{int8['metrics']['size_bytes']:,} B / {int8['metrics']['compression_vs_teacher']:.1f}x"),
        ("ORT quantize_static PTQ top-1 (same student, same 256 images)", f"{acc['int8 (ORT quantize_static PTQ)'] * 100:.2f}% ({ptq_size:,} B)"),
        ("ONNX fp32 top-1 / size", f"{acc['fp32'] * 100:.2f}% / {fp32['metrics']['size_bytes']:,} B"),
        ("ORT latency batch 1, 1 thread, median: fp32 / int8 QAT / int8 PTQ", f"{lat['fp32']:.4f} / {lat['int8']:.4f} / {lat['ptq']:.4f} ms"),
        ("ORT int8 / fp32 latency ratio", f"{lat['int8'] / lat['fp32']:.2f}x"),
        (f"distill samples/s ({args.epochs} epochs): edgeforge / plain KD loop", f"{ours:,.0f} / {plain:,.0f} ({ours / plain:.2f}x)"),
    ]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
