"""Benchmarks on the digits sample, measured side by side in one run (not part of CI).

    python benchmarks/bench_digits.py [--runs 2000] [--epochs 10]

Prints one Markdown table:
- the sample build's wall time (fresh output folder, nothing cached);
- retention and compression of the int8 ONNX artifact;
- its top-1 against onnxruntime's own quantize_static PTQ (QDQ, per-channel, int8, same calibration
  images) of the same float student;
- onnxruntime int8 / fp32 latency at batch 1, 1 thread, sessions timed interleaved;
- distill-stage samples/s against a plain hand-written KD loop on the same student and data;
- TFLite (LiteRT): int8/fp32 latency ratio at 1 and 2 threads (interleaved), and our QAT int8 top-1
  against litert-torch's own PT2E PTQ of the same float student on the same calibration images;
- Core ML: top-1, retention, drift and size of the fp16 and W8A8 programs as the reference
  interpreter runs them (latency needs macOS).
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


OVERRIDES: list[str] = []


def run_build(out: Path) -> tuple[float, dict]:
    env = {**os.environ, "CI": "1"}
    t0 = time.perf_counter()
    targets = ["onnx-cpu-fp32", "onnx-cpu-int8", "tflite-cpu-fp32", "tflite-cpu-int8", "coreml-iphone-fp16",
               "coreml-iphone-int8"]
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "edgeforge", "build", str(CONFIG), "--set", f"output={out}", *sets,
                           *[a for t in targets for a in ("--target", t)]],
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


def litert_ptq(student: torch.nn.Module, calib: torch.Tensor, path: Path) -> None:
    """litert-torch's own post-training int8 path (its PT2E quantizer), as FACTS.md verified it."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    q = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    m = torch.export.export(copy.deepcopy(student).eval(), (calib[:1],), strict=True).module()
    m = prepare_pt2e(m, q)
    with torch.no_grad():
        for i in range(0, len(calib), 1):  # batch 1: the graph was exported for batch 1
            m(calib[i : i + 1])
    m = convert_pt2e(m, fold_quantize=False)
    litert_torch.convert(m, (calib[:1],), quant_config=QuantConfig(pt2e_quantizer=q)).export(str(path))


def litert_session(path: Path, threads: int, layout: str = "NCHW"):  # type: ignore[no-untyped-def]
    from edgeforge.runtimes.litert import LiteRTSession
    from edgeforge.targets import TargetProfile

    t = TargetProfile.model_validate({"name": "bench", "format": "tflite", "precision": "int8",
                                      "input": {"layout": layout}, "runtime": {"threads": threads}})
    return LiteRTSession(path, t)


def interleaved_sessions(sessions: dict[str, object], x: np.ndarray, runs: int, warmup: int = 50) -> dict[str, float]:
    for s in sessions.values():
        for _ in range(warmup):
            s.run(x)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(x)  # type: ignore[attr-defined]
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def distill_throughput(epochs: int) -> tuple[float, float]:
    from edgeforge.config import load_config
    from edgeforge.distill import distill
    from edgeforge.pipeline import plan_build

    lc = load_config(CONFIG, {"distill.epochs": epochs})
    plan = plan_build(lc)
    cfg = lc.config.distill
    student0 = plan.new_student()
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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the build, e.g. student.width=4 (a harder compression)")
    args = ap.parse_args()
    OVERRIDES.extend(args.set)
    if not (ROOT / "samples" / "digits" / "teacher.pt").exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "digits" / "prepare.py")], check=True)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "digits"
        wall, m = run_build(out)
        t = {e["name"]: e for e in m["targets"]}
        fp32, int8 = t["onnx-cpu-fp32"], t["onnx-cpu-int8"]
        fp32_path, int8_path = out / fp32["artifact"]["path"], out / int8["artifact"]["path"]

        import yaml

        from edgeforge.config import load_config
        from edgeforge.data import calibration_split, load_data

        lc = load_config(CONFIG, {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in OVERRIDES)})
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

        # TFLite / LiteRT
        tfl_fp32, tfl_int8 = t["tflite-cpu-fp32"], t["tflite-cpu-int8"]
        student = torch.nn.Module()
        from edgeforge.models.loading import build_student

        student = build_student(lc, data.input_shape[0], data.num_classes)
        student.load_state_dict(torch.load(out / "student_float.pt", weights_only=True))
        ptq_tfl = Path(tmp) / "litert_ptq.tflite"
        litert_ptq(student, torch.from_numpy(calib), ptq_tfl)
        ptq_sess = litert_session(ptq_tfl, 1)
        tfl_ptq_top1 = float((ptq_sess.run_all(xt).argmax(1) == yt).mean())
        ptq_tfl_size = ptq_tfl.stat().st_size
        tfl_lat = {}
        for threads in (1, 2):
            sess = {"fp32": litert_session(out / tfl_fp32["artifact"]["path"], threads, "NCHW"),
                    "int8": litert_session(out / tfl_int8["artifact"]["path"], threads, "NHWC")}
            tfl_lat[threads] = interleaved_sessions(sess, xt[:1], args.runs)
        coreml = {p: t[f"coreml-iphone-{p}"] for p in ("fp16", "int8")}
    ours, plain = distill_throughput(args.epochs)
    teacher_top1 = m["models"]["teacher"]["top1"]
    rows = [
        ("sample build wall time (fresh: preflight, distill, QAT, 6 targets)", f"{wall:.1f} s"),
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
        ("TFLite int8 (QAT) top-1 in LiteRT / retention / drift vs QAT",
         f"{tfl_int8['metrics']['top1'] * 100:.2f}% / {tfl_int8['metrics']['retention']:.4f} / {tfl_int8['metrics']['drift_points']:+.2f} pt"),
        ("TFLite int8 size / compression vs teacher", f"{tfl_int8['metrics']['size_bytes']:,} B / {tfl_int8['metrics']['compression_vs_teacher']:.1f}x"),
        ("litert-torch PT2E PTQ top-1 (same student, same 256 images)", f"{tfl_ptq_top1 * 100:.2f}% ({ptq_tfl_size:,} B)"),
        ("TFLite fp32 top-1 / max abs diff vs PyTorch", f"{tfl_fp32['metrics']['top1'] * 100:.2f}% / {tfl_fp32['metrics']['max_abs_diff']:.1e}"),
        ("LiteRT latency batch 1, median, 1 thread: fp32 / int8", f"{tfl_lat[1]['fp32']:.4f} / {tfl_lat[1]['int8']:.4f} ms ({tfl_lat[1]['int8'] / tfl_lat[1]['fp32']:.2f}x)"),
        ("LiteRT latency batch 1, median, 2 threads: fp32 / int8", f"{tfl_lat[2]['fp32']:.4f} / {tfl_lat[2]['int8']:.4f} ms ({tfl_lat[2]['int8'] / tfl_lat[2]['fp32']:.2f}x)"),
    ]
    for prec, e in coreml.items():
        mt = e["metrics"]
        rows.append((f"Core ML {prec} (reference interpreter) top-1 / retention / drift / size",
                     f"{mt['top1'] * 100:.2f}% / {mt['retention']:.4f} / {mt['drift_points']:+.2f} pt vs {mt['reference']} / "
                     f"{mt['size_bytes']:,} B (latency: needs macOS)"))
    if OVERRIDES:
        print(f"config overrides: {' '.join(OVERRIDES)}\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
