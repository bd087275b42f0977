"""qat.fallback: a student with one layer int8 destroys keeps exactly that layer float, in every format.

``tiny_models.OutlierStudent``'s ``mid.0`` reads a dead channel with weights of 200: harmless in float,
but its per-channel int8 scale rounds every other weight of the layer to zero (top-1 falls to chance).
One build with the fallback under a 0.5 pt budget; its artifacts are read back per format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config, write_config

pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'edgeforge[onnx]'")
pytest.importorskip("litert_torch", reason="needs litert-torch: pip install 'edgeforge[tflite]'")
pytest.importorskip("coremltools", reason="needs coremltools: pip install 'edgeforge[coreml]'")

pytestmark = [pytest.mark.slow, pytest.mark.onnx, pytest.mark.tflite, pytest.mark.coreml]

TARGETS = ["onnx-cpu-int8", "tflite-cpu-int8", "coreml-iphone-int8"]


def _config(assets: Path, out: Path, **changes: Any) -> dict[str, Any]:
    return tiny_config(assets, out, **{
        "student": {"factory": "tiny_models:outlier_student"}, "targets": TARGETS, "preflight": False,
        "distill.epochs": 3, "qat.epochs": 1, "qat.fallback": {"max_drop_points": 0.5, "max_float_layers": 2},
        "validation": {"warmup": 1, "runs": 2}, **changes})


@pytest.fixture(scope="module")
def fallback_build(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgeforge.pipeline import build

    root = tmp_path_factory.mktemp("fallback")
    cfg = write_config(root / "edgeforge.yaml", _config(tiny_assets, root / "out"))
    result = build(cfg, log=lambda _m: None)
    return {"dir": root / "out", "manifest": json.loads(result.manifest_path.read_text()),
            "report": result.report_path.read_text()}


def _target(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in manifest["targets"] if t["name"] == name)


def test_keeps_exactly_the_sensitive_layer_float(fallback_build: dict[str, Any]) -> None:
    fb = fallback_build["manifest"]["fallback"]
    assert fb["needed"] and fb["drop_points"] > 20  # all-int8: mid.0 computes its bias only
    assert fb["kept"] == ["mid.0"]
    assert fb["ranking"][0]["module"] == "mid.0" and len(fb["ranking"]) == 3  # stem.0, mid.0, head
    assert fb["final_drop_points"] <= 0.5
    assert fallback_build["manifest"]["stages"]["qat"]["fallback"]["kept"] == ["mid.0"]
    assert "## Float fallback (qat.fallback)" in fallback_build["report"] and "**mid.0**" in fallback_build["report"]


def test_the_carrier_holds_it_float(fallback_build: dict[str, Any]) -> None:
    from edgeforge.quant.fallback import float_layers
    from edgeforge.quant.qat import load_carrier

    assert float_layers(load_carrier(str(fallback_build["dir"] / "student_qat.pt2"))) == ["mid.0"]


@pytest.mark.parametrize("name", ["onnx-cpu-int8", "coreml-iphone-int8"])
def test_artifact_holds_it_float(fallback_build: dict[str, Any], name: str) -> None:
    t = _target(fallback_build["manifest"], name)
    assert t["status"] != "failed", t["reason"]
    assert t["artifact"]["info"]["float_layers"] == {"mid.0": "float"}


def test_litert_requantizing_the_float_layer_fails_the_target(fallback_build: dict[str, Any]) -> None:
    """litert-torch 0.10 turns the lone float conv back into an int8 CONV_2D: the target fails, saying so."""
    t = _target(fallback_build["manifest"], "tflite-cpu-int8")
    assert t["status"] == "failed"
    assert "mid.0 in int8" in t["reason"] and "re-quantizes a lone float op" in t["reason"]
    assert all(o["status"] != "failed" for o in fallback_build["manifest"]["targets"] if o["name"] != t["name"])


def test_the_readers_see_int8_layers_as_int8(fallback_build: dict[str, Any]) -> None:
    """The ONNX reader is not blind: the other layers of the same file come back int8."""
    from edgeforge.carrier import Carrier
    from edgeforge.exporters.float_layers import onnx_kinds
    from edgeforge.quant.qat import load_carrier

    from tiny_models import outlier_student

    carrier = Carrier(outlier_student(), load_carrier(str(fallback_build["dir"] / "student_qat.pt2")), (1, 8, 8), 4,
                      list("abcd"), torch.zeros(1, 1, 8, 8))
    path = fallback_build["dir"] / _target(fallback_build["manifest"], "onnx-cpu-int8")["artifact"]["path"]
    assert onnx_kinds(path, carrier) == {"stem.0": {"int8"}, "mid.0": {"float"}, "head": {"int8"}}


@pytest.mark.executorch
def test_executorch_program_holds_it_float(fallback_build: dict[str, Any]) -> None:
    pytest.importorskip("executorch.runtime", reason="needs ExecuTorch: pip install 'edgeforge[executorch]'")
    from edgeforge.carrier import Carrier
    from edgeforge.exporters import get_exporter
    from edgeforge.exporters.float_layers import check_float_layers
    from edgeforge.quant.qat import load_carrier
    from edgeforge.targets import resolve

    from tiny_models import outlier_student

    student = outlier_student()
    student.load_state_dict(torch.load(fallback_build["dir"] / "student_float.pt", weights_only=True))
    carrier = Carrier(student, load_carrier(str(fallback_build["dir"] / "student_qat.pt2")), (1, 8, 8), 4,
                      list("abcd"), torch.zeros(1, 1, 8, 8))
    target = resolve(["executorch-cpu-int8"], [])[0]
    art = get_exporter("executorch").export(carrier, target, fallback_build["dir"] / "fallback.pte")
    assert check_float_layers("executorch", art.path, art.info, carrier, target.name) == {"mid.0": "float"}
    assert art.info["weights"]["stem.0"] == "int8"


def test_budget_out_of_reach_is_one_line() -> None:
    """mid.0 and half of head broken, max_float_layers 1: the search fails naming the best drop it reached."""
    from edgeforge.config import QatConfig
    from edgeforge.data import DataBundle, Split
    from edgeforge.errors import EdgeforgeError
    from edgeforge.quant.fallback import search, simulation
    from edgeforge.records import Fallback

    from tiny_models import OutlierStudent, fit_classifier, make_patterns

    torch.manual_seed(0)
    splits = [Split(n, *map(torch.from_numpy, make_patterns(k, s))) for n, k, s in
              (("train", 256, 0), ("val", 128, 1), ("test", 64, 2))]
    data = DataBundle(*splits, num_classes=4, class_names=list("abcd"))
    student = fit_classifier(OutlierStudent(outlier_head=True), data.train.x, data.train.y, epochs=6, lr=1e-2,
                             batch_size=32, shuffle=True)
    cfg = QatConfig(fallback={"max_drop_points": 0.5, "max_float_layers": 1})
    sim = simulation(student, data, data.train, cfg)
    record = Fallback("top1", 0.5, 1, sim.float_value, 0.25, 75.0, needed=True)
    with pytest.raises(EdgeforgeError) as err:
        search(sim, cfg, record, lambda _m: None)
    message = str(err.value)
    assert message.startswith("qat.fallback: int8 top-1 is 75.00 pt below") and "\n" not in message
    assert "keeping 1 layer(s) float (max_float_layers)" in message and "at best" in message
    assert record.kept == ["mid.0"]  # it raised top-1 (head alone does not: mid.0's output is constant)


def test_manifest_schema_describes_the_fallback() -> None:
    from edgeforge.records import Fallback, FallbackLayer, FallbackStep, manifest_json_schema

    schema = manifest_json_schema()
    assert "fallback" in schema["properties"]
    assert {"ranking", "steps", "kept", "final_drop_points"} <= set(schema["$defs"]["Fallback"]["properties"])
    rec = Fallback("top1", 0.5, 2, 1.0, 0.25, 75.0, True, [FallbackLayer("mid.0", 0.0, 0.01)],
                   [FallbackStep("mid.0", 0.0, True)], ["mid.0"], 1.0, 0.0)
    assert Fallback.from_dict(rec.as_dict()) == rec


def test_fallback_config_is_strict_and_keys_the_qat_stage(tiny_assets: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edgeforge.cache import stage_key
    from edgeforge.config import QatConfig, load_config
    from edgeforge.errors import ConfigError
    from edgeforge.plan import plan_build
    from edgeforge.stages import QatStage

    with pytest.raises(ValidationError, match="max_drop_point"):
        QatConfig(fallback={"max_drop_point": 0.5})
    with pytest.raises(ValidationError, match="unknown metric 'top-1'; the fallback takes a built-in one: macro_f1, "):
        QatConfig(fallback={"metric": "top-1"})
    macro = QatConfig(fallback={"metric": "macro_f1"}).fallback
    assert macro is not None and macro.metric == "macro_f1"
    typo = write_config(tmp_path / "typo.yaml", _config(tiny_assets, tmp_path / "out", **{"qat.float_modules": ["mid.O"]}))
    with pytest.raises(ConfigError, match=r"qat.float_modules: mid.O is not a conv/linear module of the student; "
                                          r"use names from: head, mid.0, stem.0"):
        plan_build(load_config(typo))  # before any training
    keys = []
    for budget in (0.5, 1.0):
        cfg = write_config(tmp_path / f"{budget}.yaml", _config(tiny_assets, tmp_path / "out", **{
            "qat.fallback": {"max_drop_points": budget}}))
        inputs = QatStage(plan_build(load_config(cfg))).key_inputs()
        assert inputs["config"]["fallback"]["max_drop_points"] == budget
        keys.append(stage_key("qat", inputs=inputs, upstream={}))
    assert keys[0] != keys[1]
