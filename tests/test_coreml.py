"""Core ML: export to .mlpackage and check it with edgeforge's numpy reference interpreter.

Core ML cannot run on Linux, so the reference interpreter is what validates Core ML artifacts there:
these tests hold it to PyTorch (fp32 1e-4; fp16 within fp16 rounding) for every op family it has a
kernel for, to the QAT simulation for W8A8 programs, and check that an op without a kernel leaves the
artifact unvalidated instead of passing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeforge.carrier import Carrier
from edgeforge.errors import ExportError, RuntimeUnavailable
from edgeforge.exporters import get_exporter
from edgeforge.runtimes import get_runtime
from edgeforge.targets import TargetProfile, load_profile

from tiny_models import fit_classifier

pytest.importorskip("coremltools")
pytestmark = pytest.mark.coreml

ROOT = Path(__file__).resolve().parent.parent
FP16_TOL = 2e-2  # relative to the output's scale: a few fp16 ulps (2^-11) accumulated over a dozen ops


def carrier_for(model: nn.Module, input_shape: tuple[int, ...], quantized: torch.fx.GraphModule | None = None,
                num_classes: int = 10) -> Carrier:
    return Carrier(model.eval(), quantized, input_shape, num_classes, [f"c{i}" for i in range(num_classes)],
                   torch.zeros(4, *input_shape), name="tiny")


def target(precision: str, batch: int = 2, **coreml: object) -> TargetProfile:
    return TargetProfile(name=f"t-{precision}", format="coreml", precision=precision,  # type: ignore[arg-type]
                         input={"batch": batch}, coreml=coreml)


def export(tmp: Path, model: nn.Module, shape: tuple[int, ...], precision: str, quantized=None, **kw):  # type: ignore[no-untyped-def]
    t = target(precision, **kw)
    art = get_exporter("coreml").export(carrier_for(model, shape, quantized), t, tmp / f"{precision}.mlpackage")
    return art, get_runtime("coreml").open(art.path, t)


# ---- one tiny model per op family ------------------------------------------------------------------

class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=(1, 2))
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 5, padding="same", groups=8, bias=False)
        self.valid = nn.Conv2d(8, 6, (2, 3))
        self.c1d = nn.Conv1d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.valid(self.depthwise(self.dilated(self.strided(self.plain(x)))))
        return self.c1d(x.flatten(2))


class Linears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(2))  # N, 3, 16
        g = torch.matmul(h, h.transpose(1, 2))  # N, 3, 3
        return torch.cat([self.b(h).flatten(1), g.flatten(1) * 0.1], 1)


class Activations(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 3
        outs = [F.relu(x), F.relu6(x), torch.sigmoid(x), torch.tanh(x), F.silu(x), F.gelu(x),
                F.gelu(x, approximate="tanh"), F.leaky_relu(x, 0.1), F.elu(x), F.hardswish(x), F.hardsigmoid(x),
                F.softplus(x), torch.clamp(x, -1.0, 2.0), torch.exp(x * 0.3), torch.sqrt(x.abs() + 1),
                torch.softmax(x, 1)]
        return torch.cat(outs, 1).flatten(1)


class Pools(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.max_pool2d(x, 2), F.max_pool2d(x, 3, 2, padding=1), F.max_pool2d(x, 2, 2, ceil_mode=True),
                F.avg_pool2d(x, 2), F.avg_pool2d(x, 3, 2, padding=1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                F.avg_pool2d(x, 2, 2, ceil_mode=True), F.adaptive_avg_pool2d(x, 1)]
        return torch.cat([o.flatten(1) for o in outs] + [x.mean((2, 3)), x.amax(3).flatten(1), x.sum(2).flatten(1)], 1)


class Shapes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 3)  # N, HW, C
        b = a[:, 1:9:2, :].transpose(1, 2)  # N, C, 4
        c, d = torch.chunk(x, 2, dim=3)
        e = torch.cat([c, d * 2, c - d], 1)[:, :, 1:-1]
        f = (e.unsqueeze(1) / 3 + 1).squeeze(1)
        return torch.cat([b.flatten(1), f.flatten(1), torch.maximum(c, d).flatten(1)], 1)


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.ln = nn.LayerNorm(6)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.bn(x))  # BN before a conv stays a batch_norm op
        return self.ln(h.mean(2)).flatten(1)


FAMILIES = {"conv": (Convs, (3, 16, 16)), "linear_matmul": (Linears, (3, 4, 3)),
            "activations": (Activations, (2, 4, 4)), "pooling_reduce": (Pools, (3, 9, 9)),
            "shape_elementwise": (Shapes, (3, 6, 6)), "norms": (Norms, (3, 8, 8))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reference_interpreter_matches_pytorch(family: str, tmp_path: Path) -> None:
    cls, shape = FAMILIES[family]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    for precision in ("fp32", "fp16"):
        art, session = export(tmp_path, model, shape, precision)
        out = session.run(x.numpy())
        diff = float(np.abs(out - ref).max())
        print(f"{family} {precision}: max|diff| {diff:.2e} (scale {scale:.1f}) ops {art.info['ops']}")
        assert out.shape == ref.shape and out.dtype == np.float32
        assert diff <= (1e-4 if precision == "fp32" else FP16_TOL * scale), (family, precision, diff)


# ---- W8A8 from a QAT carrier on the digits -----------------------------------------------------------

@pytest.fixture(scope="module")
def digits_qat():  # type: ignore[no-untyped-def]
    import importlib.util

    pytest.importorskip("sklearn")
    from edgeforge.config import QatConfig
    from edgeforge.data import DataBundle, Split
    from edgeforge.models.students import STUDENTS
    from edgeforge.quant.qat import quantization_aware_training

    spec = importlib.util.spec_from_file_location("digits_prepare", ROOT / "samples" / "digits" / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(prepare)  # type: ignore[union-attr]
    splits = prepare.split_digits(0)  # the same splits samples/digits/prepare.py writes
    data = DataBundle(*(Split(n, torch.from_numpy(x), torch.from_numpy(y)) for n, (x, y) in splits.items()),
                      num_classes=10, class_names=[str(i) for i in range(10)])
    torch.manual_seed(0)
    student = STUDENTS.get("separable")(1, 10, width=16, depth=2)
    fit_classifier(student, data.train.x, data.train.y, epochs=6, lr=1e-2, batch_size=64, shuffle=True)
    calibration = Split("calibration", data.train.x[:256], data.train.y[:256])
    out = quantization_aware_training(student, None, data, calibration, QatConfig(epochs=1, lr=1e-3),
                                      temperature=3.0, alpha=0.5, show_progress=False)
    return data, student, out.converted


@pytest.mark.parametrize("deployment", ["iOS17", "iOS18"])
def test_w8a8_program_agrees_with_qat_simulation(digits_qat, deployment: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, student, converted = digits_qat
    profile = load_profile(ROOT / "targets" / "coreml-iphone-int8.yaml")
    if deployment != profile.coreml.minimum_deployment_target:
        profile = profile.model_copy(update={"coreml": profile.coreml.model_copy(
            update={"minimum_deployment_target": deployment})})
    carrier = Carrier(student, converted, (1, 8, 8), 10, data.class_names, data.train.x[:64], name="digits")
    art = get_exporter("coreml").export(carrier, profile, tmp_path / "model.mlpackage")
    ops = art.info["ops"]
    print(f"digits int8 {deployment}: ops {ops}")
    assert ops["quantize"] >= 5 and ops["dequantize"] >= 5
    assert ("constexpr_blockwise_shift_scale" if deployment == "iOS18" else "constexpr_affine_dequantize") in ops
    assert art.info["compute_precision"] == "fp16" and art.info["minimum_deployment_target"] == deployment
    session = get_runtime("coreml").open(art.path, profile)
    x = data.test.x.numpy()
    out = session.run_all(x)
    with torch.no_grad():
        sim = converted(data.test.x).numpy()
    agreement = float((out.argmax(1) == sim.argmax(1)).mean())
    top1 = float((out.argmax(1) == data.test.y.numpy()).mean())
    print(f"digits int8 {deployment}: agreement {agreement:.4f}, top-1 {top1:.4f} (sim "
          f"{float((sim.argmax(1) == data.test.y.numpy()).mean()):.4f}), max|diff| {np.abs(out - sim).max():.3f}")
    assert agreement >= 0.99


# ---- what the interpreter cannot run is unvalidated, never passed --------------------------------------

class WithCumsum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x.flatten(1), 1)


def test_op_without_kernel_is_unvalidated(tmp_path: Path) -> None:
    from edgeforge.coreml import UnsupportedOp

    t = target("fp32")
    art = get_exporter("coreml").export(carrier_for(WithCumsum(), (1, 4, 4)), t, tmp_path / "m.mlpackage")
    assert "cumsum" in art.info["ops"]
    runtime = get_runtime("coreml")
    assert runtime.inspect(art.path)["ops_without_reference_kernel"] == ["cumsum"]
    with pytest.raises(UnsupportedOp, match="op cumsum has no reference kernel") as err:
        runtime.open(art.path, t)
    assert isinstance(err.value, RuntimeUnavailable) and err.value.ops == ["cumsum"]


# ---- the exporter's contract ---------------------------------------------------------------------------

def test_package_metadata_session_and_static_shapes(tmp_path: Path) -> None:
    import coremltools as ct

    model = Convs().eval()
    profile = load_profile(ROOT / "targets" / "coreml-iphone-fp16.yaml")
    carrier = carrier_for(model, (3, 16, 16))
    path = tmp_path / "model.mlpackage"
    path.mkdir()  # a stale package from an earlier run is replaced, not merged
    (path / "stale").write_text("x")
    art = get_exporter("coreml").export(carrier, profile, path)
    assert path.is_dir() and not (path / "stale").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"
    spec = ct.utils.load_spec(str(path))
    meta = spec.description.metadata
    assert meta.author == "edgeforge" and meta.versionString and "fp16" in meta.shortDescription
    assert meta.userDefined["class_labels"] == ",".join(carrier.class_names)
    assert [i.name for i in spec.description.input] == ["input"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 16, 16]
    assert art.info["ops"]["conv"] == 6 and art.info["compute_precision"] == "fp16"
    session = get_runtime("coreml").open(path, profile)
    if session.measures_latency:  # macOS: Core ML itself
        assert session.executor.startswith("macOS Core ML")
    else:
        assert session.executor.startswith("edgeforge reference interpreter (numpy)")
    assert session.fixed_batch == 1
    assert session.run_all(np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 4, 49)

    with pytest.raises(ExportError, match="static batch"):
        get_exporter("coreml").export(carrier, target("fp32", batch="dynamic"), tmp_path / "d.mlpackage")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="QAT carrier"):
        get_exporter("coreml").export(carrier, target("int8"), tmp_path / "q.mlpackage")


def test_image_input_applies_scale_and_bias(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()
    art, session = export(tmp_path, model, (1, 8, 8), "fp32", batch=1, input_type="image",
                          image_scale=1 / 255, image_bias=[-0.5])
    pixels = np.random.default_rng(0).integers(0, 256, (2, 1, 8, 8))
    x = (pixels / 255 - 0.5).astype(np.float32)  # what the data loader gives the model
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(session.run_all(x) - ref).max() <= 1e-4


# ---- weight-only compression of float programs (coreml.weights) ----------------------------------------

class ConvLinear(nn.Module):
    """conv 432 / 4608 weights, linear 20480: all above the exporter's 256-element threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


def _package_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def _blob_indices_unpacked_by_coremltools(path: Path) -> dict[str, np.ndarray]:
    """iOS18 lut indices read straight from weight.bin (blob metadata: sentinel, dtype, size, offset) and
    unpacked by coremltools' own numpy helper, keyed by the op's output name."""
    import struct

    from coremltools.optimize._utils import restore_elements_from_packed_bits
    from coremltools.proto import Model_pb2

    from edgeforge.coreml.program import model_dir_of

    spec_path, model_dir = model_dir_of(path)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    fn = spec.mlProgram.functions["main"]
    out = {}
    for op in fn.block_specializations[fn.opset].operations:
        if op.type != "constexpr_lut_to_dense":
            continue
        value = op.inputs["indices"].arguments[0].value
        blob = value.blobFileValue
        data = (model_dir / blob.fileName.removeprefix("@model_path/")).read_bytes()
        sentinel, _, size, offset, _ = struct.unpack_from("<IIQQQ", data, blob.offset)
        assert sentinel == 0xDEADBEEF
        shape = [d.constant.size for d in value.type.tensorType.dimensions]
        nbits = {35: 4, 38: 6}[value.type.tensorType.dataType]  # uint4, uint6
        raw = np.frombuffer(data, np.uint8, size, offset)
        out[op.outputs[0].name] = restore_elements_from_packed_bits(raw, nbits, int(np.prod(shape))).reshape(shape)
    return out


@pytest.fixture(scope="module")
def conv_linear_fp16(tmp_path_factory):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = ConvLinear().eval()
    tmp = tmp_path_factory.mktemp("fp16")
    art = get_exporter("coreml").export(carrier_for(model, (3, 16, 16)), target("fp16", batch=1), tmp / "m.mlpackage")
    assert art.info["weight_compression"] is None
    return model, _package_bytes(art.path), _package_bytes(art.path, "weight.bin")


COMPRESSED = [("int8", "iOS17", "constexpr_affine_dequantize", 0.55), ("int8", "iOS18", "constexpr_blockwise_shift_scale", 0.55),
              ("palette4", "iOS16", "constexpr_lut_to_dense", 0.3), ("palette4", "iOS18", "constexpr_lut_to_dense", 0.3),
              ("palette6", "iOS17", "constexpr_lut_to_dense", 0.42), ("palette6", "iOS18", "constexpr_lut_to_dense", 0.42)]


@pytest.mark.parametrize(("weights", "deployment", "op", "max_ratio"), COMPRESSED)
def test_weight_compression(conv_linear_fp16, weights: str, deployment: str, op: str, max_ratio: float,  # type: ignore[no-untyped-def]
                            tmp_path: Path) -> None:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from edgeforge.coreml import ReferenceInterpreter

    model, fp16_bytes, fp16_weight_bytes = conv_linear_fp16
    t = target("fp16", batch=1, minimum_deployment_target=deployment, weights=weights)
    art = get_exporter("coreml").export(carrier_for(model, (3, 16, 16)), t, tmp_path / "w.mlpackage")
    ops, info = art.info["ops"], art.info["weight_compression"]
    assert ops.get(op) == 3 and info["compressed_tensors"] == 3 and info["weights"] == weights, ops
    # weight.bin shrinks by the bit width (plus luts / scales and 64-byte blob headers); the package also
    # holds the program spec, which does not shrink.
    size, weight_bytes = _package_bytes(art.path), _package_bytes(art.path, "weight.bin")
    assert size < fp16_bytes and weight_bytes < max_ratio * fp16_weight_bytes, (size, fp16_bytes, weight_bytes)

    # The SAME program with its weights decompressed by coremltools (materialized_val_inference, numpy):
    # every decompressed tensor equals ours, and so do the outputs.
    ours = ReferenceInterpreter(art.path)
    plain = tmp_path / "decompressed.mlpackage"
    cto.decompress_weights(ct.models.MLModel(str(art.path), skip_model_load=True)).save(str(plain))
    theirs = ReferenceInterpreter(plain)
    assert op not in theirs.program.histogram()
    names = [o.outputs[0][0] for o in ours.program.ops if o.type == op]
    weight_diff = max(float(np.abs(ours._consts[n].astype(np.float32) - theirs._consts[n].astype(np.float32)).max())
                      for n in names)
    assert weight_diff == 0.0, weight_diff
    if deployment == "iOS18" and weights.startswith("palette"):  # the blob reader's unpacking of uint4/uint6
        by_name = {o.outputs[0][0]: o.inputs["indices"][0][1] for o in ours.program.ops if o.type == op}
        for name, indices in _blob_indices_unpacked_by_coremltools(art.path).items():
            assert np.array_equal(by_name[name], indices), name

    x = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    out = get_runtime("coreml").open(art.path, t).run_all(x.numpy())
    out_theirs = np.concatenate([theirs(xi[None]) for xi in x.numpy()[:16]])
    agreement = float((out.argmax(1) == ref.argmax(1)).mean())
    diff, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    print(f"{weights} {deployment}: package {size} B vs fp16 {fp16_bytes} B ({size / fp16_bytes:.2f}), weight.bin "
          f"{weight_bytes} B vs {fp16_weight_bytes} B ({weight_bytes / fp16_weight_bytes:.2f}), weights vs coremltools "
          f"{weight_diff}, max|out - torch| {diff:.4f} (scale {scale:.2f}), top-1 agreement {agreement:.3f}")
    assert np.array_equal(out[:16], out_theirs)
    # A random-init model's logits are close to tied (scale ~0.3), so top-1 is a harsh measure here: a
    # 16-entry palette moves the logits by ~10% of their scale (measured 0.89 agreement), 64 entries ~3%
    # (0.97), int8 per-channel <1% (0.99).
    assert diff <= {"int8": 0.02, "palette6": 0.05, "palette4": 0.15}[weights] * scale
    assert agreement >= {"int8": 0.97, "palette6": 0.94, "palette4": 0.85}[weights]


def test_weight_compression_rejected_for_w8a8(tmp_path: Path) -> None:
    carrier = carrier_for(ConvLinear(), (3, 16, 16))
    with pytest.raises(ExportError, match="precision int8 \\(W8A8\\) already stores int8 weights") as err:
        get_exporter("coreml").export(carrier, target("int8", weights="int8"), tmp_path / "q.mlpackage")
    assert "\n" not in str(err.value) and "t-int8" in str(err.value)
