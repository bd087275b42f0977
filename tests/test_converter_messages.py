"""Converter failures name the student's op and a fix in one line; preflight tells "cannot convert" from
"cannot validate on this host".

Each student is tiny and each case runs only the conversion it needs. The raw messages these map
("Torch var 0 not found in context", "expected one subgraph, found 2", complex element types) came
from coremltools 9.0 and litert-torch 0.10.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeforge.carrier import Carrier
from edgeforge.errors import ExportError
from edgeforge.exporters import get_exporter
from edgeforge.exporters.base import converter_failed
from edgeforge.preflight import MAX_LINE, TargetCheck, check_target, clip_line
from edgeforge.targets import TargetProfile, resolve


class _Student(nn.Module):
    """conv -> relu -> one op under test -> mean -> linear, on 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.middle(torch.relu(self.conv(x))))

    def middle(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GridSampleStudent(_Student):
    def middle(self, f: torch.Tensor) -> torch.Tensor:
        theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(f.shape[0], 2, 3)
        grid = nn.functional.affine_grid(theta, list(f.shape), align_corners=False)
        return nn.functional.grid_sample(f, grid, align_corners=False).mean((2, 3))


class TopkStudent(_Student):
    def middle(self, f: torch.Tensor) -> torch.Tensor:
        return torch.topk(f.flatten(2), 4, dim=2).values.mean(2)


class RfftStudent(_Student):
    def middle(self, f: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(f, dim=-1).abs().mean((2, 3))


class RfftConvStudent(_Student):
    """The spectrum feeds a conv, so litert-torch's NHWC pass moves the complex tensor to channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def middle(self, f: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.fft.rfft(f, dim=-1).abs())).mean((2, 3))


def _carrier(student: nn.Module) -> Carrier:
    """The student and its calibrated int8 graph, as preflight builds them."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeforge.quant.qat import export_for_training
    from edgeforge.quant.quantizer import Int8Quantizer, Int8Scheme

    torch.manual_seed(0)
    student = student.eval()
    x = torch.randn(8, 1, 8, 8)
    prepared = prepare_pt2e(export_for_training(student, x), Int8Quantizer(Int8Scheme(learn_activation_ranges=False)))
    with torch.no_grad():
        prepared(x)
    return Carrier(student, convert_pt2e(prepared), (1, 8, 8), 4, [str(i) for i in range(4)], x, name="probe")


def _profile(fmt: str, precision: str) -> TargetProfile:
    return TargetProfile.model_validate({"name": f"{fmt}-{precision}-probe", "format": fmt, "precision": precision,
                                         "input": {"batch": 1}})


def _preflight(student: nn.Module, target: TargetProfile, tmp_path: Path) -> TargetCheck:
    return check_target(_carrier(student), target, tmp_path, torch.randn(3, 1, 8, 8))


def _export_error(student: nn.Module, target: TargetProfile, tmp_path: Path) -> ExportError:
    with pytest.raises(ExportError) as info:
        get_exporter(target.format).export(_carrier(student), target, tmp_path / f"m{get_exporter(target.format).suffix}")
    return info.value


@pytest.mark.coreml
def test_coreml_grid_sample_names_the_op_and_a_fix(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    check = _preflight(GridSampleStudent(), _profile("coreml", "fp32"), tmp_path)
    assert not check.ok
    assert check.message.startswith("target coreml-fp32-probe: the coreml converter cannot take op aten.grid_sampler: ")
    assert "Torch var 0 not found in context" in check.message  # the converter's own words, kept short
    assert check.message.endswith("keep grid_sample out of the student (e.g. F.interpolate, or a fixed shift), "
                                  "or drop target coreml-fp32-probe")
    assert "\n" not in check.message and check.message.count("aten.grid_sampler") == 1


@pytest.mark.coreml
def test_coreml_int8_rfft_names_the_fft(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    err = _export_error(RfftStudent(), _profile("coreml", "int8"), tmp_path)
    assert err.op == "aten.fft_rfft" and err.target == "coreml-int8-probe"
    assert "Unable to lower complex dialect op" in err.message
    assert err.fix is not None and err.fix.startswith("use a float Core ML target (fp16)")


@pytest.mark.tflite
def test_tflite_int8_topk_names_the_op_not_the_subgraph_count(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    target = resolve(["tflite-cpu-int8"])[0]  # the shipped profile: NHWC, float32 I/O around int8
    err = _export_error(TopkStudent(), target, tmp_path)
    assert (err.op, err.target) == ("aten.topk", "tflite-cpu-int8")
    assert "STABLEHLO_SORT" in err.message and "expected one subgraph, found 2" in err.message
    assert str(err).endswith("keep top-k/sort out of the student (take the top-k of its logits after the model), "
                             "or drop target tflite-cpu-int8")


@pytest.mark.tflite
def test_tflite_rfft_blames_the_fft_not_the_abs_after_it(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    err = _export_error(RfftConvStudent(), resolve(["tflite-cpu-int8"])[0], tmp_path)
    assert err.op == "aten.fft_rfft"  # the message names aten.abs (the complex tensor's consumer)
    assert "TFLite has no complex tensors" in err.message
    assert err.fix is not None and "drop target tflite-cpu-int8" in err.fix


def test_tflite_layout_pass_message_names_the_fft_and_the_layout_fix() -> None:
    # Reported from a build (issue 13) and not reproduced with litert-torch 0.10.0 on the students tried
    # here, so the converter's exception is given; the student's graph is real.
    raw = AssertionError("Attempting to convert non-NHWC compatible node to NHWC: dequantize_per_tensor_1")
    err = converter_failed("litert-torch conversion", raw, _carrier(RfftStudent()), resolve(["tflite-cpu-int8"])[0])
    assert err.op == "aten.fft_rfft"
    assert err.fix is not None and err.fix.startswith("set input.layout: NCHW in the profile")
    # the same words from a student without an FFT are not blamed on an op it does not have
    plain = converter_failed("litert-torch conversion", raw, _carrier(TopkStudent()), resolve(["tflite-cpu-int8"])[0])
    assert plain.op is None and plain.fix is None
    assert str(plain).startswith("target tflite-cpu-int8: litert-torch conversion failed: AssertionError: ")


@pytest.mark.coreml
def test_preflight_warns_when_the_artifact_converts_but_cannot_be_validated_here(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    check = _preflight(TopkStudent(), _profile("coreml", "fp32"), tmp_path)
    assert check.ok, check.message  # converts: not fatal
    assert check.warnings == ["will be unvalidated on this host: op topk has no reference kernel"]


def test_a_long_converter_message_is_one_clipped_line_that_keeps_the_fix() -> None:
    raw = RuntimeError("lowering failed:\n" + "  %x = stablehlo.foo ...\n" * 700)
    err = converter_failed("litert-torch conversion", raw, _carrier(TopkStudent()), _profile("tflite", "int8"))
    long = ExportError(err.message + " " + "detail " * 2000, target="t", fix="drop target t")
    line = clip_line(str(long))
    assert len(str(long)) > 14_000 and len(line) <= MAX_LINE and "\n" not in line
    assert line.startswith("target t: litert-torch conversion failed: RuntimeError: lowering failed")
    assert line.endswith(" [...]; drop target t")
