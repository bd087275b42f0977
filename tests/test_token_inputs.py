"""Named, typed, multi-input models in every format: token ids + attention mask, and two float inputs.

A tiny transformer student (vocab 100, 16 tokens, width 32, one layer) is QAT-prepared with
edgeforge's quantizer (range initialisation, 3 LSQ steps, convert), exported in every format at
fp32 and int8 and run in that format's runtime with int64 ids and masks. fp32 artifacts are held to
the float student, int8 ones to the QAT simulation within a few steps of the output's scale; where a
format keeps ops float in its int8 file, those islands must be named by the student's modules.
A model with an image and a feature-vector input checks that only the 4-D input is transposed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from test_op_coverage import FP16, NEEDS, _qat
from torch import nn

from edgeforge.carrier import Carrier
from edgeforge.errors import ConfigError
from edgeforge.exporters import get_exporter
from edgeforge.inputs import InputSpec, batch_dims, check_batch, image_inputs, token_inputs
from edgeforge.models.families.transformer import TransformerClassifier, init_from_teacher, project_embedding
from edgeforge.models.students import STUDENTS
from edgeforge.runtimes import get_runtime
from edgeforge.runtimes.torch_ref import TorchSession
from edgeforge.targets import TargetProfile

VOCAB, SEQ, CLASSES, BATCH = 100, 16, 5, 4
FORMATS = ["onnx", "tflite", "coreml", "executorch"]
FP32_ATOL = 1e-4
INT8_LSB = 3.0  # int8 artifacts vs the QAT simulation, in steps of the logits' output scale


def token_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids and right-padded masks of lengths 3..16 (every row has padding but the longest)."""
    g = np.random.default_rng(seed)
    ids = g.integers(0, VOCAB, (n, SEQ), dtype=np.int64)
    lengths = g.integers(3, SEQ + 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    return ids, mask


def _output_scale(gm: torch.fx.GraphModule) -> float:
    """The scale of the dequantize that produces the carrier's logits."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    node = out.args[0][0] if isinstance(out.args[0], (list, tuple)) else out.args[0]
    assert "dequantize_per_tensor" in str(node.target), node.target
    return float(node.args[1])


class TwoInputs(nn.Module):
    """An image [3, 8, 6] and a feature vector [5]: conv + mean over H, W, concatenated with a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.features = nn.Linear(5, 4)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.conv(image)).mean((2, 3)), self.features(extra)], 1))


TWO_INPUTS = (InputSpec("image", (3, 8, 6)), InputSpec("extra", (5,)))


@pytest.fixture(scope="module")
def tokens() -> dict[str, Any]:
    torch.manual_seed(0)
    model = TransformerClassifier(VOCAB, CLASSES, max_len=SEQ, width=32, depth=1, heads=4, ffn=64, dropout=0.0).eval()
    specs = token_inputs(SEQ, VOCAB)
    train = tuple(torch.from_numpy(a) for a in token_batch(64, 0))
    exported = torch.export.export(model, tuple(t[:2] for t in train), dynamic_shapes=batch_dims(specs)).module()
    quantized = _qat(model, train, exported)
    test = token_batch(2 * BATCH + 1, 1)  # not a multiple of the batch: run_all pads the last chunk
    with torch.no_grad():
        simulation = quantized(*(torch.from_numpy(a) for a in test)).numpy()
        reference = model(*(torch.from_numpy(a) for a in test)).numpy()
    carrier = Carrier(model, quantized, (SEQ,), CLASSES, [], train[0][:8], name="tokens", inputs=specs)
    return {"carrier": carrier, "test": test, "simulation": simulation, "reference": reference,
            "scale": _output_scale(quantized)}


@pytest.fixture(scope="module")
def artifacts(tokens: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """Per (format, precision): the token artifact's export info and its runtime's outputs on the test batch."""
    cache: dict[tuple[str, str], Any] = {}

    def get(fmt: str, precision: str) -> dict[str, Any]:
        key = (fmt, precision)
        if key not in cache:
            pytest.importorskip(NEEDS[fmt])
            exporter = get_exporter(fmt)
            target = TargetProfile.model_validate({"name": f"tok-{fmt}-{precision}", "format": fmt,
                                                   "precision": precision, "input": {"batch": BATCH}})
            try:
                art = exporter.export(tokens["carrier"], target, tmp_path_factory.mktemp(fmt) / f"m{exporter.suffix}")
                session = get_runtime(fmt).open(art.path, target)
                cache[key] = {"info": art.info, "path": art.path, "session": session,
                              "out": session.run_all(tokens["test"])}
            except Exception as exc:  # once per (format, precision), not once per test
                cache[key] = exc
        if isinstance(cache[key], Exception):
            raise cache[key]
        return cache[key]  # type: ignore[no-any-return]

    return get


def _marks(fmt: str) -> list[Any]:
    marks = [getattr(pytest.mark, fmt)]
    if fmt == "executorch":  # ~30 s per XNNPACK lowering
        marks.append(pytest.mark.slow)
    return marks


CASES = [pytest.param(fmt, marks=_marks(fmt)) for fmt in FORMATS]


@pytest.mark.parametrize("fmt", CASES)
def test_fp32_token_artifact_matches_the_float_student(artifacts: Any, tokens: dict[str, Any], fmt: str) -> None:
    got = artifacts(fmt, "fp32")["out"]
    diff = float(np.abs(got - tokens["reference"]).max())
    assert diff <= FP32_ATOL, f"{fmt} fp32: max |artifact - float student| = {diff:.2e}"


@pytest.mark.parametrize("fmt", CASES)
def test_int8_token_artifact_matches_the_qat_simulation(artifacts: Any, tokens: dict[str, Any], fmt: str) -> None:
    got, sim, scale = artifacts(fmt, "int8")["out"], tokens["simulation"], tokens["scale"]
    allowed = INT8_LSB * scale + (np.abs(sim) * FP16 if fmt == "coreml" else 0.0)
    worst = float((np.abs(got - sim) / scale).max())
    assert np.all(np.abs(got - sim) <= allowed), f"{fmt} int8: |artifact - QAT simulation| up to {worst:.2f} LSB"
    # The int8 file agrees with the simulation on every prediction, not just within a tolerance.
    assert (got.argmax(1) == sim.argmax(1)).all()


@pytest.mark.parametrize("fmt", CASES)
def test_artifacts_declare_named_integer_inputs(artifacts: Any, fmt: str) -> None:
    """Every format names the inputs after the model; Core ML narrows int64 ids to int32, LiteRT too."""
    info = artifacts(fmt, "int8")["info"]
    narrowed = {"onnx": "int64", "executorch": "int64", "coreml": "int32", "tflite": "int32"}[fmt]
    assert [(i["name"], i["dtype"]) for i in info["inputs"]] == [("input_ids", narrowed), ("attention_mask", narrowed)]
    assert [list(i["shape"]) for i in info["inputs"]] == [[BATCH, SEQ], [BATCH, SEQ]]


@pytest.mark.onnx
def test_padding_tokens_do_not_change_the_output(artifacts: Any, tokens: dict[str, Any]) -> None:
    """The mask is applied arithmetically: ids under a 0 mask are ignored by the artifact, not just the student."""
    ids, mask = tokens["test"]
    scrambled = np.where(mask == 1, ids, (ids * 31 + 7) % VOCAB)
    session = artifacts("onnx", "fp32")["session"]
    assert (scrambled != ids).any()
    np.testing.assert_allclose(session.run_all((scrambled, mask)), session.run_all((ids, mask)), atol=1e-5)


@pytest.mark.onnx
def test_a_float_batch_for_integer_ids_is_refused_by_name(artifacts: Any, tokens: dict[str, Any]) -> None:
    ids, mask = tokens["test"]
    with pytest.raises(TypeError, match="input 'input_ids' takes integers"):
        artifacts("onnx", "fp32")["session"].run((ids[:BATCH].astype(np.float32), mask[:BATCH]))


@pytest.mark.tflite
def test_tflite_int8_runs_transformer_ops_on_int8_kernels_and_names_float_islands(artifacts: Any) -> None:
    info = artifacts("tflite", "int8")["info"]
    ops = info["ops"]
    for kernel in ("FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU"):
        assert any(set(t.replace(" -> ", ",").split(",")) <= {"int8", "int32"} for t in ops[kernel]["types"]), \
            f"{kernel} is not int8: {ops[kernel]}"
    modules = {o["module"] for o in info["float_ops"]}
    # What LiteRT keeps float: layer norms (no int8 builtin), the embedding gather of a dequantized
    # table, the mask's int -> float arithmetic and the masked mean (SUM / DIV).
    assert {"layers.0.norm1", "layers.0.norm2", "norm", "embed", "attention_bias", "pool"} <= modules, modules
    int8_modules = ("layers.0.attn", "layers.0.ffn", "classifier")
    assert not [o for o in info["float_ops"] if o["module"].startswith(int8_modules)], info["float_ops"]


@pytest.mark.executorch
@pytest.mark.slow
def test_executorch_int8_names_its_portable_float_islands_by_module(artifacts: Any) -> None:
    info = artifacts("executorch", "int8")["info"]
    islands = info["float_islands_by_module"]
    assert {"layers.0.norm1", "layers.0.norm2", "norm", "embed"} <= set(islands), islands
    delegated = info["delegation"]["delegated_ops"]
    assert delegated.get("aten.linear.default") == 7 and delegated.get("aten.bmm.default") == 2, delegated


@pytest.mark.coreml
def test_coreml_int8_program_keeps_the_carrier_quantization(artifacts: Any) -> None:
    ops = artifacts("coreml", "int8")["info"]["ops"]
    assert ops.get("constexpr_affine_dequantize", 0) >= 7  # the 7 linear weights, int8
    assert ops.get("quantize", 0) > 0 and ops.get("gather") == 1


# --- two float inputs of different shapes ------------------------------------------------------

@pytest.fixture(scope="module")
def two_inputs() -> dict[str, Any]:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    g = np.random.default_rng(2)
    test = (g.standard_normal((BATCH + 1, 3, 8, 6)).astype(np.float32), g.standard_normal((BATCH + 1, 5)).astype(np.float32))
    with torch.no_grad():
        reference = model(*(torch.from_numpy(a) for a in test)).numpy()
    carrier = Carrier(model, None, (3, 8, 6), CLASSES, [], torch.zeros(1), name="two", inputs=TWO_INPUTS)
    return {"carrier": carrier, "test": test, "reference": reference}


TWO_CASES = [pytest.param(fmt, "NCHW", marks=_marks(fmt)) for fmt in FORMATS]
TWO_CASES.append(pytest.param("tflite", "NHWC", marks=_marks("tflite")))


@pytest.mark.parametrize("fmt,layout", TWO_CASES)
def test_two_float_inputs_of_different_shapes(two_inputs: dict[str, Any], tmp_path: Any, fmt: str, layout: str) -> None:
    pytest.importorskip(NEEDS[fmt])
    exporter = get_exporter(fmt)
    target = TargetProfile.model_validate({"name": f"two-{fmt}", "format": fmt, "precision": "fp32",
                                           "input": {"batch": BATCH, "layout": layout}})
    art = exporter.export(two_inputs["carrier"], target, tmp_path / f"m{exporter.suffix}")
    got = get_runtime(fmt).open(art.path, target).run_all(two_inputs["test"])
    diff = float(np.abs(got - two_inputs["reference"]).max())
    assert diff <= FP32_ATOL, f"{fmt} {layout}: max |artifact - model| = {diff:.2e}"
    shapes = [list(i["shape"]) for i in art.info["inputs"]]
    image = [BATCH, 8, 6, 3] if layout == "NHWC" else [BATCH, 3, 8, 6]
    assert shapes == [image, [BATCH, 5]], shapes  # only the 4-D float input is channel-last
    assert [i["name"] for i in art.info["inputs"]] == ["image", "extra"]


# --- the interface itself (no converter) ---------------------------------------------------------

def test_carrier_defaults_to_one_float_input_and_keeps_example() -> None:
    c = Carrier(nn.Identity(), None, (3, 8, 8), 2, [], torch.zeros(1))
    assert c.inputs == image_inputs((3, 8, 8)) and c.inputs[0].name == "input"
    assert isinstance(c.example(2), torch.Tensor) and c.example(2).shape == (2, 3, 8, 8)
    t = Carrier(nn.Identity(), None, (SEQ,), 2, [], torch.zeros(1), inputs=token_inputs(SEQ, VOCAB))
    ids, mask = t.examples(3)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < VOCAB and len(set(ids.flatten().tolist())) > 10
    assert mask.dtype == torch.int64 and bool((mask == 1).all())
    assert isinstance(t.example(3), tuple)


def test_bad_input_specs_and_batches_are_named_in_one_line() -> None:
    with pytest.raises(ConfigError, match="input 'ids': dtype 'int16' is not one of float32, int32, int64"):
        InputSpec("ids", (4,), "int16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="vocab_size needs an integer dtype"):
        InputSpec("x", (4,), "float32", vocab_size=10)
    specs = token_inputs(SEQ, VOCAB)
    ids, mask = token_batch(2, 0)
    with pytest.raises(ValueError, match="input 'attention_mask': shape \\[8\\] per example, the model takes \\[16\\]"):
        check_batch(specs, [ids, mask[:, :8]])
    with pytest.raises(ValueError, match="input 'input_ids' takes int64 values, got float32"):
        check_batch(specs, [ids.astype(np.float32), mask])
    check_batch(specs, [ids, mask])


def test_torch_session_runs_a_tuple_and_pads_nothing() -> None:
    model = STUDENTS.get("transformer")(1, CLASSES, width=32, depth=2, vocab_size=VOCAB, max_len=SEQ, heads=2).eval()
    batch = token_batch(5, 3)
    out = TorchSession(model).run_all(batch, batch_size=2)
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in batch)).numpy()
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_embedding_projection_keeps_the_teachers_geometry() -> None:
    """A rank-8 teacher table projected to width 8 keeps every pairwise distance up to one scale."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(VOCAB, 8, generator=g) @ torch.randn(8, 64, generator=g) + torch.randn(64, generator=g)
    student = project_embedding(teacher, 8)
    assert student.shape == (VOCAB, 8)
    exact = "donot_use_mm_for_euclid_dist"
    d_t, d_s = torch.cdist(teacher, teacher, compute_mode=exact), torch.cdist(student, student, compute_mode=exact)
    off_diagonal = ~torch.eye(VOCAB, dtype=torch.bool)
    ratio = d_s[off_diagonal] / d_t[off_diagonal]
    assert float(ratio.std() / ratio.mean()) < 1e-3
    assert abs(float(student.std() / teacher.std()) - 1.0) < 1e-3
    model = TransformerClassifier(VOCAB, CLASSES, max_len=SEQ, width=8, depth=1, heads=2)
    init_from_teacher(model, teacher)
    assert torch.equal(model.embed.weight.data, student)
    with pytest.raises(ConfigError, match="teacher vocabulary 50 != student vocab_size 100"):
        init_from_teacher(model, teacher[:50])
