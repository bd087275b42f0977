"""Built-in MobileNet-style student families: shapes, scaling, the published sizes, bad config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeforge.errors import ConfigError
from edgeforge.models.students import STUDENTS, count_parameters


@pytest.mark.parametrize("family", ["mobilenet_v3", "mobilenet_v2", "efficientnet_lite"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shape_on_small_inputs(family: str, shape: tuple[int, int, int]) -> None:
    m = STUDENTS.get(family)(shape[0], 10, width=16, depth=4).eval()
    with torch.no_grad():
        assert m(torch.randn(3, *shape)).shape == (3, 10)


@pytest.mark.parametrize("family", ["mobilenet_v3", "mobilenet_v2", "efficientnet_lite"])
def test_parameter_count_grows_with_width_and_depth(family: str) -> None:
    build = STUDENTS.get(family)
    by_width = [count_parameters(build(1, 10, width=w, depth=3)) for w in (8, 16, 32)]
    assert by_width[0] < by_width[1] < by_width[2]
    # Convolution weights grow about quadratically with the width multiplier (V2's 1280-wide
    # last layer stays fixed below width 32, so the ratio is smaller there; EfficientNet-Lite's
    # 1280-wide head never scales, so its ratio is smaller still).
    assert by_width[2] > (1.5 if family == "efficientnet_lite" else 1.8) * by_width[1]
    assert count_parameters(build(1, 10, width=16, depth=2)) < count_parameters(build(1, 10, width=16, depth=4))


def test_full_size_configurations_match_the_papers() -> None:
    # torchvision's mobilenet_v3_small / mobilenet_v2 have exactly these parameter counts.
    assert count_parameters(STUDENTS.get("mobilenet_v3")(3, 1000, width=16, depth=5)) == 2_542_856
    assert count_parameters(STUDENTS.get("mobilenet_v2")(3, 1000, width=32, depth=7)) == 3_504_872
    # TensorFlow's EfficientNet-Lite0 (tensorflow/tpu efficientnet/lite) has 4,652,008.
    assert count_parameters(STUDENTS.get("efficientnet_lite")(3, 1000, width=32, depth=7)) == 4_652_008


def test_v3_has_squeeze_excite_with_hardsigmoid_and_hardswish() -> None:
    m = STUDENTS.get("mobilenet_v3")(1, 10, width=16, depth=5)
    names = dict(m.named_modules())
    assert isinstance(names["features.1.se.gate"], nn.Hardsigmoid)
    assert sum(isinstance(x, nn.Hardswish) for x in m.modules()) >= 10
    no_se = STUDENTS.get("mobilenet_v3")(1, 10, width=16, depth=5, se=False)
    assert not any(isinstance(x, nn.Hardsigmoid) for x in no_se.modules())


def test_v2_uses_relu6_and_linear_bottlenecks() -> None:
    m = STUDENTS.get("mobilenet_v2")(1, 10, width=16, depth=3)
    assert any(isinstance(x, nn.ReLU6) for x in m.modules())
    for block in m.features[1:-1]:
        assert len(block.project) == 2  # conv + BN, no activation: the linear bottleneck


def test_efficientnet_lite_is_relu6_without_squeeze_excite_with_5x5_depthwise() -> None:
    m = STUDENTS.get("efficientnet_lite")(1, 10, width=32, depth=7)
    assert any(isinstance(x, nn.ReLU6) for x in m.modules())
    assert not any(isinstance(x, (nn.Hardsigmoid, nn.Hardswish, nn.SiLU)) for x in m.modules())
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert len(depthwise) == 16 and {c.kernel_size[0] for c in depthwise} == {3, 5}
    assert m.features[-1][0].out_channels == 1280  # Lite keeps the head fixed when the width scales
    assert STUDENTS.get("efficientnet_lite")(1, 10, width=16, depth=4).features[-1][0].out_channels == 1280


@pytest.mark.parametrize("family,depth", [("mobilenet_v3", 6), ("mobilenet_v2", 8), ("efficientnet_lite", 8)])
def test_too_deep_names_the_key_and_range(family: str, depth: int) -> None:
    with pytest.raises(ConfigError, match=r"student.depth: .* use 1\.\."):
        STUDENTS.get(family)(1, 10, width=16, depth=depth)


@pytest.mark.slow
@pytest.mark.tflite
def test_mobilenet_v3_small_passes_full_int8_tflite_preflight(tmp_path: Path) -> None:
    """All 11 blocks of MobileNetV3-Small (SE with hardsigmoid, hardswish) come out int8 builtins only."""
    pytest.importorskip("litert_torch")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeforge.carrier import Carrier
    from edgeforge.preflight import check_target
    from edgeforge.quant.qat import export_for_training
    from edgeforge.quant.quantizer import Int8Quantizer, Int8Scheme
    from edgeforge.targets import TargetProfile

    torch.manual_seed(0)
    student = STUDENTS.get("mobilenet_v3")(1, 10, width=16, depth=5, hidden=128).eval()
    x = torch.randn(16, 1, 32, 32)
    prepared = prepare_pt2e(export_for_training(student, x), Int8Quantizer(Int8Scheme(learn_activation_ranges=False)))
    with torch.no_grad():
        prepared(x)
    carrier = Carrier(student, convert_pt2e(prepared), (1, 32, 32), 10, [str(i) for i in range(10)], x)
    target = TargetProfile.model_validate({"name": "full-int8", "format": "tflite", "precision": "int8",
                                           "input": {"batch": 1}})
    check = check_target(carrier, target, tmp_path, x[:4])
    assert check.ok, check.message
    assert check.warnings == []
