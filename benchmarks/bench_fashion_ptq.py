"""Where QAT earns its cost: edgeforge's QAT artifacts against post-training quantization peers.

    python benchmarks/bench_fashion_ptq.py [--setting int8] [--setting narrow] [--limit N]

On the Fashion-MNIST sample (run samples/fashion_mnist/prepare.py first), for each setting one
edgeforge build distills the student and runs QAT (reused from the build folder's stage cache when
it is already built); then, on that same float student and the same
calibration images (calibration/fashion-mnist.yaml), these int8 artifacts are made and each is run
in its own runtime on the full test split (10,000 images):

- edgeforge QAT: the build's ONNX / TFLite / Core ML W8A8 artifacts;
- edgeforge PTQ (`qat.epochs: 0`), minmax and histogram range initialisation, through the same
  exporters;
- NNCF PTQ for PT2E (`nncf.experimental.torch.fx.quantize_pt2e` with edgeforge's int8 quantizer,
  so at int8 the scheme is identical) without and with its fast bias correction, through the same
  exporters; NNCF quantizes weights to 8 bits whatever the spec, so under w4a8 its rows carry 8-bit
  weights and their labels say so (`grid_label`);
- onnxruntime `quantize_static` (QDQ, per-channel int8) of the build's fp32 ONNX file;
- litert-torch's own PT2E PTQ of the float student.

Settings: `int8` is the sample as shipped; `narrow` is a much narrower depthwise student (fewer
channels per layer leave PTQ less redundancy to hide rounding in); `w4a8` puts the weights on a
4-bit grid (`qat.scheme: w4a8`, [-7, 7] per channel, still stored in int8 tensors), where rounding
alone moves every weight by up to 1/14 of its channel's range. onnxruntime's `quantize_static` and
litert-torch's PTQ have no 4-bit per-channel convolution weights, so their rows are 8-bit only.
Prints one Markdown table.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))
CONFIG = ROOT.parent / "samples" / "fashion_mnist" / "edgeforge.yaml"

from bench_digits import litert_ptq, ort_ptq  # noqa: E402

# setting -> (config overrides, build folder). `int8` builds into the sample's own folder, so a
# finished `edgeforge build samples/fashion_mnist/edgeforge.yaml` is reused from its stage cache.
SETTINGS: dict[str, tuple[list[str], str]] = {
    "int8": ([], "build/fashion_mnist"),
    "narrow": (["student.width=8"], "build/fashion_mnist_narrow"),
    "w4a8": (["qat.scheme=w4a8"], "build/fashion_mnist_w4a8"),
}
INT8_TARGETS = {"ONNX (onnxruntime)": "onnx-cpu-int8", "TFLite (LiteRT)": "tflite-cpu-int8",
                "Core ML W8A8 (reference)": "coreml-iphone-int8", "ExecuTorch (XNNPACK)": "executorch-cpu-int8"}

FORMATS = {t.split("-")[0] for t in INT8_TARGETS.values()}


def run_build(out: Path, overrides: list[str]) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "CI": "1"}
    sets = [a for o in [f"output={out}", *overrides] for a in ("--set", o)]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeforge", "build", str(CONFIG), *sets],
                          cwd=ROOT.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 2):  # 2: a gate failed, the artifacts are still measured
        sys.exit(f"sample build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads((out / "manifest.json").read_text())


def ptq_carrier(student: torch.nn.Module, data: Any, calib: Any, range_init: str, scheme: str) -> torch.fx.GraphModule:
    """edgeforge's own PTQ: the QAT stage with qat.epochs 0 (calibrated ranges, no fine-tuning)."""
    from edgeforge.config import QatConfig
    from edgeforge.quant.qat import quantization_aware_training

    cfg = QatConfig.model_validate({"epochs": 0, "range_init": range_init, "scheme": scheme})
    out = quantization_aware_training(student, None, data, calib, cfg, temperature=1.0, alpha=0.0, show_progress=False)
    return out.converted


def nncf_carrier(student: torch.nn.Module, calib: torch.Tensor, bias_correction: bool, scheme: str) -> torch.fx.GraphModule:
    """NNCF's PTQ on the same PT2E graph and with the same quantizer (at int8 only the ranges differ)."""
    import nncf
    from nncf.experimental.torch.fx import quantize_pt2e

    from edgeforge.quant.qat import export_for_training
    from edgeforge.quant.quantizer import Int8Quantizer, Int8Scheme

    gm = export_for_training(copy.deepcopy(student).eval(), calib)
    batches = [calib[i : i + 64] for i in range(0, len(calib), 64)]
    bits = 4 if scheme == "w4a8" else 8
    return quantize_pt2e(gm, Int8Quantizer(Int8Scheme(learn_activation_ranges=False, weight_bits=bits)),
                         calibration_dataset=nncf.Dataset(batches), subset_size=len(batches),
                         fast_bias_correction=True if bias_correction else None)


def grid_label(label: str, gm: torch.fx.GraphModule, scheme: str) -> str:
    """The row label, saying so when a carrier's conv/linear weights are not on the scheme's grid.

    NNCF 3.4's torchao adapter keeps no bit width: it quantizes weights to 8 bits whatever the spec,
    narrow ([-127, 127]) only for a spec of exactly that range, so a w4a8 spec ([-7, 7]) gives
    8-bit weights on [-128, 127] and that row measures w8a8 PTQ, not w4a8.
    """
    want = (-7, 7) if scheme == "w4a8" else (-127, 127)
    dq = torch.ops.quantized_decomposed.dequantize_per_channel.default
    grids = {(int(n.args[4]), int(n.args[5])) for n in gm.graph.nodes if n.op == "call_function" and n.target == dq}
    if grids <= {want}:
        return label
    return f"{label} (weights on {', '.join(f'[{a}, {b}]' for a, b in sorted(grids))}, not the scheme's [{want[0]}, {want[1]}])"


def export_and_score(gm: torch.fx.GraphModule, student: torch.nn.Module, data: Any, calib: torch.Tensor,
                     folder: Path, test: tuple[np.ndarray, np.ndarray]) -> dict[str, float | str]:
    """Each format's int8 artifact of one carrier, top-1 in its own runtime."""
    from edgeforge.carrier import Carrier
    from edgeforge.exporters import get_exporter
    from edgeforge.runtimes import get_runtime
    from edgeforge.targets import resolve

    carrier = Carrier(float_model=student, quantized=gm, input_shape=data.input_shape, num_classes=data.num_classes,
                      class_names=data.class_names, calibration=calib, name="bench")
    scores: dict[str, float | str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for column, name in INT8_TARGETS.items():
        (target,) = resolve([name])
        try:
            art = get_exporter(target.format).export(carrier, target, folder / f"{name}.{target.format}")
            scores[column] = top1(get_runtime(target.format).open(art.path, target), test)
        except Exception as exc:  # one format refusing a peer's graph is a finding, not the end of the run
            scores[column] = f"fails: {str(exc).strip().splitlines()[0][:80] if str(exc).strip() else type(exc).__name__}"
    return scores


def top1(session: Any, test: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = test
    return float((session.run_all(x).argmax(1) == y).mean())


def artifact_scores(out: Path, m: dict[str, Any], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float | str]:
    """The build's own int8 artifacts, scored again here so every row is measured in this run."""
    from edgeforge.runtimes import get_runtime
    from edgeforge.targets import resolve

    by_name = {e["name"]: e for e in m["targets"]}
    scores: dict[str, float | str] = {}
    for col, name in INT8_TARGETS.items():
        (target,) = resolve([name])
        artifact = (by_name.get(name) or {}).get("artifact")
        if not artifact:
            scores[col] = f"build failed: {(by_name.get(name) or {}).get('error', 'not built')}"[:100]
            continue
        scores[col] = top1(get_runtime(target.format).open(out / artifact["path"], target), test)
    return scores


def float_student_file(out: Path) -> Path:
    """The build's float student; while its QAT still runs, the finished distill stage's copy."""
    if (out / "student_float.pt").is_file():
        return out / "student_float.pt"
    staged = sorted(out.glob("cache/distill-*/*.pt"), key=lambda p: p.stat().st_mtime)
    if not staged:
        sys.exit(f"error: {out} has no float student yet: build it first (or drop --reuse)")
    return staged[-1]


def qat_in_process(lc: Any, student: torch.nn.Module, data: Any, cal: Any) -> torch.fx.GraphModule:
    """The QAT stage as a build runs it (the setting's qat section, the teacher's KD term), without a build."""
    from edgeforge.models.loading import load_teacher
    from edgeforge.quant.qat import quantization_aware_training

    cfg = lc.config
    teacher = load_teacher(lc).eval()
    out = quantization_aware_training(copy.deepcopy(student), teacher, data, cal, cfg.qat,
                                      temperature=cfg.distill.temperature, alpha=cfg.distill.alpha, show_progress=True)
    return out.converted


def measure_setting(setting: str, tmp: Path, limit: int | None, reuse: bool,
                    student_from: Path | None = None) -> dict[str, Any]:
    import yaml

    from edgeforge.config import load_config
    from edgeforge.data import calibration_split, load_data
    from edgeforge.models.loading import build_student

    overrides, folder = SETTINGS[setting]
    out = ROOT.parent / folder
    m: dict[str, Any] | None = None
    wall = 0.0
    if student_from is not None:
        out = student_from
    elif reuse:
        if (out / "manifest.json").is_file():
            m = json.loads((out / "manifest.json").read_text())
    else:
        wall, m = run_build(out, overrides)
    lc = load_config(CONFIG, {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)})
    data = load_data(lc)
    cal = calibration_split(data, lc.calibration())
    student = build_student(lc, data.input_shape[0], data.num_classes)
    student.load_state_dict(torch.load(float_student_file(out), weights_only=True))
    student.eval()
    xt, yt = data.test.x.numpy(), data.test.y.numpy()
    test = (xt[:limit], yt[:limit]) if limit else (xt, yt)
    rows: dict[str, dict[str, float | str]] = {}
    qat_sim = (m or {}).get("models", {}).get("qat_simulation", {}).get("top1")
    if student_from is not None:
        carrier = qat_in_process(lc, student, data, cal)
        with torch.no_grad():
            qat_sim = float((carrier(data.test.x).argmax(1) == data.test.y).float().mean())
        label = f"edgeforge QAT ({lc.config.qat.epochs} epoch, {lc.config.qat.scheme}, same exporters)"
        rows[label] = export_and_score(carrier, student, data, cal.x, tmp / setting / "qat", test)
        m = None
    elif m is not None:
        rows["edgeforge QAT (the build's artifacts)"] = artifact_scores(out, m, test)
    rows.update(peer_rows(student, data, cal, tmp / setting, test, lc.config.qat.scheme))
    with torch.no_grad():
        float_top1 = float((student(data.test.x).argmax(1) == data.test.y).float().mean())
    models = m["models"] if m else {}
    return {"wall": wall, "rows": rows, "teacher": models.get("teacher"), "float_top1": float_top1,
            "params": sum(p.numel() for p in student.parameters()), "qat_sim": qat_sim, "overrides": overrides}


def peer_rows(student: torch.nn.Module, data: Any, cal: Any, tmp: Path,
              test: tuple[np.ndarray, np.ndarray], scheme: str) -> dict[str, dict[str, float | str]]:
    from edgeforge.carrier import Carrier
    from edgeforge.exporters import get_exporter
    from edgeforge.runtimes import get_runtime
    from edgeforge.targets import resolve

    makers: dict[str, Callable[[], torch.fx.GraphModule]] = {
        "edgeforge PTQ, minmax ranges (qat.epochs 0)": lambda: ptq_carrier(student, data, cal, "minmax", scheme),
        "edgeforge PTQ, histogram ranges (qat.epochs 0)": lambda: ptq_carrier(student, data, cal, "histogram", scheme),
        "NNCF PTQ (quantize_pt2e), no bias correction": lambda: nncf_carrier(student, cal.x, False, scheme),
        "NNCF PTQ (quantize_pt2e) + fast bias correction": lambda: nncf_carrier(student, cal.x, True, scheme),
    }
    rows: dict[str, dict[str, float | str]] = {}
    for label, make in makers.items():
        gm = make()
        rows[grid_label(label, gm, scheme)] = export_and_score(gm, student, data, cal.x, tmp / f"peer{len(rows)}", test)
    if scheme != "w8a8":  # the two tools below quantize convolution weights to 8 bits only
        return rows
    if "ONNX (onnxruntime)" in INT8_TARGETS:
        onnx_t, fp32_t = resolve(["onnx-cpu-int8", "onnx-cpu-fp32"])
        carrier = Carrier(float_model=student, quantized=None, input_shape=data.input_shape,
                          num_classes=data.num_classes, class_names=data.class_names, calibration=cal.x, name="bench")
        fp32 = get_exporter("onnx").export(carrier, fp32_t, tmp / "fp32.onnx").path
        ort_ptq(fp32, cal.x.numpy(), tmp / "ort_ptq.onnx")
        rows["onnxruntime quantize_static"] = {"ONNX (onnxruntime)": top1(get_runtime("onnx").open(tmp / "ort_ptq.onnx", onnx_t), test)}
    if "TFLite (LiteRT)" in INT8_TARGETS:
        (tfl_t,) = resolve(["tflite-cpu-int8"])
        litert_ptq(student, cal.x, tmp / "litert_ptq.tflite")
        tfl_nchw = tfl_t.model_copy(update={"input": tfl_t.input.model_copy(update={"layout": "NCHW"})})
        rows["litert-torch PT2E PTQ"] = {"TFLite (LiteRT)": top1(get_runtime("tflite").open(tmp / "litert_ptq.tflite", tfl_nchw), test)}
    return rows


def cell(score: float | str | None) -> str:
    if score is None:
        return "–"
    return score if isinstance(score, str) else f"{score * 100:.2f}%"


def print_table(results: dict[str, dict[str, Any]], total: float) -> None:
    cols = list(INT8_TARGETS)
    for setting, r in results.items():
        t, q = r["teacher"], r["qat_sim"]
        print(f"\n### {setting} ({' '.join(r['overrides']) or 'the sample as shipped'})\n")
        print((f"teacher {t['top1'] * 100:.2f}% ({t['parameters']:,} parameters); " if t else "")
              + f"float student {r['float_top1'] * 100:.2f}% ({r['params']:,} parameters); "
              + (f"QAT simulation {q * 100:.2f}%; " if q is not None else "QAT not finished (no manifest yet); ")
              + (f"edgeforge build {r['wall']:.0f} s (stages already in the build folder are reused)\n" if r["wall"]
                 else "build folder reused as it is (--reuse)\n"))
        print("| int8 artifact (same float student, same calibration images) | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for label, scores in r["rows"].items():
            cells = [cell(scores.get(c)) for c in cols]
            print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nbenchmark wall time: {total:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="default: all")
    ap.add_argument("--limit", type=int, default=None, help="score on the first N test images only (a quick look)")
    ap.add_argument("--reuse", action="store_true", help="take a finished build folder as it is (no edgeforge build run)")
    ap.add_argument("--format", action="append", choices=sorted(FORMATS), help="int8 artifact formats to compare (default: all)")
    ap.add_argument("--student-from", type=Path, default=None,
                    help="a finished build folder whose float student every setting starts from; QAT then runs "
                         "in this process with the setting's qat section (no distillation, no build)")
    args = ap.parse_args()
    for col in [c for c, t in INT8_TARGETS.items() if args.format and t.split("-")[0] not in args.format]:
        del INT8_TARGETS[col]
    if not (CONFIG.parent / "teacher.pt").exists():
        sys.exit("error: samples/fashion_mnist/teacher.pt is missing: run `python samples/fashion_mnist/prepare.py` first")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: measure_setting(s, Path(tmp), args.limit, args.reuse, args.student_from)
                   for s in (args.setting or SETTINGS)}
    print_table(results, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
