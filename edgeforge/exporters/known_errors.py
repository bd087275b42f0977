"""Converter failures seen before, mapped to the student op behind them and a fix.

A converter's own words rarely name the op it choked on ("Torch var 0 not found in context").
Each row here pairs a pattern of a converter's message with the student ops known to cause it;
a row applies only when one of those ops is really in the student's graph, so a message is never
blamed on an op the student does not have. Rows were reproduced with coremltools 9.0 and
litert-torch 0.10.0 on tiny students (tests/test_converter_messages.py); re-check them on upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_FFT_OPS = ("aten.fft_rfft", "aten.fft_rfft2", "aten.fft_rfftn", "aten.fft_fft", "aten.fft_fft2", "aten.fft_fftn",
            "aten._fft_r2c", "aten._fft_c2c", "aten.stft", "aten.view_as_complex")


@dataclass(frozen=True)
class KnownError:
    formats: tuple[str, ...]  # the formats whose converter says this
    pattern: str  # a regular expression searched in the converter's message
    ops: tuple[str, ...]  # student ops that cause it; the first one in the student's graph is named
    why: str  # what goes wrong, in the user's terms
    fix: str  # how to get past it ({target} is the profile's name)


KNOWN_ERRORS: tuple[KnownError, ...] = (
    KnownError(("coreml",), r"Torch var \S+ not found in context", ("aten.grid_sampler", "aten.grid_sampler_2d"),
               "coremltools' grid_sample converter reads its mode arguments as graph values, and torch.export "
               "passes them as constants",
               "keep grid_sample out of the student (e.g. F.interpolate, or a fixed shift), or drop target {target}"),
    KnownError(("tflite",), r"expected one subgraph, found \d+", ("aten.topk", "aten.sort", "aten.argsort"),
               "litert-torch lowers it to STABLEHLO_SORT, a float op with a comparator subgraph, which a "
               "full-int8 file cannot hold",
               "keep top-k/sort out of the student (take the top-k of its logits after the model), "
               "or drop target {target}"),
    KnownError(("tflite",), r"Unsupported ir element type: complex", _FFT_OPS,
               "TFLite has no complex tensors",
               "compute the spectrum with real ops (a matmul with fixed cos/sin weights), or drop target {target}"),
    KnownError(("coreml",), r"Unable to lower complex dialect op", _FFT_OPS,
               "coremltools lowers complex ops only in a float program; in an int8 one the FFT of a dequantized "
               "tensor stays complex",
               "use a float Core ML target (fp16) for this student, compute the spectrum with real ops, "
               "or drop target {target}"),
    KnownError(("tflite",), r"non-NHWC compatible node", _FFT_OPS,
               "litert-torch's NHWC layout pass cannot move a non-4-D tensor of the spectrum to channels-last",
               "set input.layout: NCHW in the profile, compute the spectrum with real 4-D ops, "
               "or drop target {target}"),
)


@dataclass(frozen=True)
class Explained:
    op: str
    why: str
    fix: str


def explain(fmt: str, message: str, student_ops: Sequence[str], target: str) -> Explained | None:
    """The known cause of a converter's ``message`` for a student with ``student_ops``, if there is one."""
    for row in KNOWN_ERRORS:
        if fmt not in row.formats or not re.search(row.pattern, message):
            continue
        op = next((o for o in row.ops if o in student_ops), None)
        if op is not None:
            return Explained(op, row.why, row.fix.format(target=target))
    return None
