"""The R8 text sample side by side: the MiniLM teacher, the float student and every artifact of a build.

    python benchmarks/bench_text_r8.py [--build build/text_r8] [--rounds 3] [--runs 50] [--threads 1]

Reads a finished `edgeforge build samples/text_r8/edgeforge.yaml` (its manifest: test top-1 and
macro-F1 of the teacher, float student and each artifact as validated in its own runtime; sizes) and
times, in this one process and round-robin so the host's load falls on all alike, batch-1 latency of
the teacher (PyTorch eager, the sample's `models.py` + `teacher.pt`), the float student (PyTorch
eager, rebuilt from the build's `student_float.pt`) and each artifact in its runtime (onnxruntime,
LiteRT, ExecuTorch; Core ML has no latency on Linux: the reference interpreter's timings are not Core
ML's) on one tokenized test document (128 tokens: every document costs the same, padding included).
Prints one Markdown table; p50 is the median over rounds of each round's median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "text_r8"
sys.path.insert(0, str(ROOT))


def _document(cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    from edgeforge.config import TextConfig
    from edgeforge.data.text import load_text, load_tokenizer

    text = TextConfig(**cfg["data"]["text"])
    tok = SAMPLE / text.tokenizer
    test = load_text("test", SAMPLE / cfg["data"]["test"], text.model_copy(update={"tokenizer": str(tok)}),
                     load_tokenizer(tok))
    ids, mask = test.x  # type: ignore[misc]
    return ids[:1], mask[:1]


def _teacher() -> torch.nn.Module:
    sys.path.insert(0, str(SAMPLE))
    from models import teacher  # type: ignore[import-not-found]

    model = teacher()
    model.load_state_dict(torch.load(SAMPLE / "teacher.pt", weights_only=True))
    return model.eval()


def _student(build: Path, manifest: dict[str, Any]) -> torch.nn.Module:
    """The float student as the build configured it (its resolved config), through the family registry."""
    from edgeforge.models.students import STUDENTS

    s = manifest["config"]["resolved"]["student"]
    token = manifest["data"]["inputs"][0]
    builder = STUDENTS.get(s["family"])
    model = builder(1, len(manifest["data"]["class_names"]), width=s["width"], depth=s["depth"],
                    vocab_size=token["vocab_size"], max_len=token["shape"][-1], **s["kwargs"])
    model.load_state_dict(torch.load(build / "student_float.pt", weights_only=True))
    return model.eval()


def _sessions(build: Path, manifest: dict[str, Any], threads: int) -> dict[str, Any]:
    from edgeforge.runtimes import get_runtime
    from edgeforge.runtimes.torch_ref import TorchSession
    from edgeforge.targets import resolve

    out: dict[str, Any] = {"teacher (PyTorch eager)": TorchSession(_teacher()),
                           "float student (PyTorch eager)": TorchSession(_student(build, manifest))}
    dirs = [SAMPLE / d for d in manifest["config"]["resolved"].get("target_dirs", [])]
    for t in manifest["targets"]:
        if t["status"] != "validated" or not t["metrics"].get("latency"):
            continue
        [profile] = resolve([t["name"]], dirs)
        profile = profile.model_copy(update={"runtime": profile.runtime.model_copy(update={"threads": threads})})
        out[t["name"]] = get_runtime(profile.format, profile.runtime.engine).open(build / t["artifact"]["path"],
                                                                                 profile)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=ROOT / "build" / "text_r8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from edgeforge.validate import measure_latency

    torch.set_num_threads(args.threads)
    manifest = json.loads((args.build / "manifest.json").read_text())
    doc = _document(manifest["config"]["resolved"])
    sessions = _sessions(args.build, manifest, args.threads)
    p50: dict[str, list[float]] = {name: [] for name in sessions}
    x = tuple(a.numpy() for a in doc)
    for _ in range(args.rounds):
        for name, session in sessions.items():
            lat = measure_latency(session, x, warmup=5, runs=args.runs, threads=args.threads, measured_on="host")
            p50[name].append(lat.p50_ms)
    _table(manifest, {k: statistics.median(v) for k, v in p50.items()})


def _table(m: dict[str, Any], p50: dict[str, float]) -> None:
    models, teacher_bytes = m["models"], m["models"]["teacher"]["bytes"]
    base = p50["teacher (PyTorch eager)"]

    def lat(name: str) -> str:
        return f"{p50[name]:.2f} ms ({p50[name] / base:.3f}x)" if name in p50 else "needs macOS"

    print("| model | runtime | test top-1 | test macro-F1 | size | smaller than the teacher | batch-1 p50 (x teacher) |")
    print("|---|---|---|---|---|---|---|")
    t, s = models["teacher"], models["float_student"]
    print(f"| teacher | PyTorch | {t['top1']:.2%} | {t['value']:.4f} | {teacher_bytes:,} B ({t['parameters']:,} "
          f"params) | - | {lat('teacher (PyTorch eager)')} |")
    print(f"| float student | PyTorch | {s['top1']:.2%} | {s['value']:.4f} | {s['parameters']:,} params | "
          f"{t['parameters'] / s['parameters']:.1f}x fewer params | {lat('float student (PyTorch eager)')} |")
    for tg in m["targets"]:
        size = tg["artifact"]["size_bytes"]
        print(f"| {tg['name']} | {tg['executor'].split(' (')[0]} | {tg['metrics']['top1']:.2%} | "
              f"{tg['metrics']['value']:.4f} | {size:,} B | {teacher_bytes / size:.1f}x | {lat(tg['name'])} |")


if __name__ == "__main__":
    main()
