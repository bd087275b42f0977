"""Task metrics: the built-ins against hand-computed values, a user's metric, a build judged by macro-F1."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeforge.config import RegressionConfig, load_config
from edgeforge.errors import ConfigError, EdgeforgeError
from edgeforge.factories import add_search_paths
from edgeforge.metrics import METRICS, per_class_recall, resolve_metric, scores

from conftest import tiny_config, write_config


def _one_hot(pred: list[int], classes: int) -> np.ndarray:
    logits = np.zeros((len(pred), classes), np.float32)
    logits[np.arange(len(pred)), pred] = 1.0
    return logits


# labels 0 0 1 1 2 2, predictions 0 1 1 1 0 0: class 2 is never predicted
LABELS = np.array([0, 0, 1, 1, 2, 2])
LOGITS = _one_hot([0, 1, 1, 1, 0, 0], 3)


def test_top1_and_per_class_recall_by_hand() -> None:
    assert METRICS.get("top1")(LOGITS, LABELS) == pytest.approx(3 / 6)
    assert per_class_recall(LOGITS, LABELS, 4) == [0.5, 1.0, 0.0, None]  # class 3 is not in the split
    assert METRICS.get("mean_class_recall")(LOGITS, LABELS) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert METRICS.get("min_class_recall")(LOGITS, LABELS) == 0.0


def test_macro_f1_with_a_class_never_predicted() -> None:
    # class 0: tp 1, fp 2, fn 1 -> F1 2/5; class 1: tp 2, fp 1, fn 0 -> F1 4/5; class 2: tp 0, fn 2 -> F1 0
    assert METRICS.get("macro_f1")(LOGITS, LABELS) == pytest.approx((0.4 + 0.8 + 0.0) / 3)
    # a class in neither labels nor predictions does not count (scikit-learn's macro average)
    wide = np.concatenate([LOGITS, np.full((6, 1), -1.0, np.float32)], axis=1)
    assert METRICS.get("macro_f1")(wide, LABELS) == pytest.approx(0.4)


def test_macro_f1_agrees_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(300, 7)), rng.integers(0, 6, 300)
    want = metrics.f1_score(labels, logits.argmax(1), average="macro", zero_division=0)
    assert METRICS.get("macro_f1")(logits, labels) == pytest.approx(want)


def test_top5_by_hand() -> None:
    logits = np.array([[9, 8, 7, 6, 5, 4, 3], [9, 8, 7, 6, 5, 4, 3], [9, 8, 7, 6, 5, 4, 3]], np.float32)
    labels = np.array([0, 4, 5])  # ranked 1st, 5th, 6th
    assert METRICS.get("top5")(logits, labels) == pytest.approx(2 / 3)


def test_top5_with_fewer_than_six_classes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^metric: top5 needs more than 5 classes; the data has 4; use top1"):
        resolve_metric("top5", 4)
    with pytest.raises(EdgeforgeError, match="top5 needs more than 5 classes; the model has 3"):
        METRICS.get("top5")(LOGITS, LABELS)
    assert "top5" not in scores(LOGITS, LABELS, METRICS.get("macro_f1"))


def test_top5_of_four_classes_fails_before_training(make_config) -> None:  # type: ignore[no-untyped-def]
    from edgeforge.plan import plan_build

    lc = load_config(make_config(metric="top5"))
    with pytest.raises(ConfigError) as err:
        plan_build(lc)
    assert err.value.key == "metric" and "top5 needs more than 5 classes; the data has 4" in str(err.value)


def test_unknown_metric_names_the_key_and_lists_the_built_ins(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"metric: unknown metric 'f1'; available: macro_f1, mean_class_recall, "
                                          r"min_class_recall, top1, top5; or name your own as package.module:function"):
        load_config(make_config(metric="f1"))


def test_the_manifest_schema_says_which_metric_each_number_is() -> None:
    from edgeforge.records import manifest_json_schema

    defs = manifest_json_schema()["$defs"]
    for record in ("Metrics", "ModelRecord"):
        assert {"metric", "value", "scores"} <= set(defs[record]["properties"])
        assert "value" not in defs[record].get("required", [])  # manifests from before metric: stay valid


def _user_module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text("import numpy as np\n\n\n" + body)
    add_search_paths([folder])


def test_user_metric_from_a_module_file_is_loaded_and_fingerprinted(tmp_path: Path) -> None:
    _user_module(tmp_path, "metric_user_a", "def hits_of_class_1(logits, labels):\n"
                 "    pred = logits.argmax(1)\n    return float(((pred == 1) & (labels == 1)).sum() / 2)\n")
    m = resolve_metric("metric_user_a:hits_of_class_1", 3)
    assert (m.name, m.label) == ("metric_user_a:hits_of_class_1", "hits_of_class_1")
    assert m(LOGITS, LABELS) == 1.0
    assert scores(LOGITS, LABELS, m)["metric_user_a:hits_of_class_1"] == 1.0
    (tmp_path / "metric_user_a.py").write_text((tmp_path / "metric_user_a.py").read_text() + "# edited\n")
    assert resolve_metric("metric_user_a:hits_of_class_1", 3).code != m.code  # its code is in the cache keys


def test_a_user_metric_that_misbehaves_is_one_line(tmp_path: Path, make_config) -> None:  # type: ignore[no-untyped-def]
    _user_module(tmp_path, "metric_user_b", "def nan(logits, labels):\n    return float('nan')\n\n\n"
                 "def one_arg(logits):\n    return 1.0\n")
    with pytest.raises(EdgeforgeError, match=r"^metric: metric_user_b:nan\(\) returned nan, not a finite"):
        resolve_metric("metric_user_b:nan")(LOGITS, LABELS)
    with pytest.raises(ConfigError, match="metric: metric_user_b:one_arg does not take these arguments"):
        load_config(make_config(metric="metric_user_b:one_arg"))
    with pytest.raises(ConfigError, match="metric: cannot import module 'no_such_metrics'"):
        load_config(make_config(metric="no_such_metrics:f"))


@pytest.fixture(scope="module")
def f1_build(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    pytest.importorskip("onnxruntime")
    from edgeforge.pipeline import build

    root = tmp_path_factory.mktemp("f1")
    cfg = tiny_config(tiny_assets, root / "out", metric="macro_f1", targets=["onnx-cpu-int8"],
                      **{"distill.epochs": 6, "qat.epochs": 1})
    result = build(write_config(root / "edgeforge.yaml", cfg), log=lambda _m: None)
    return result.manifest_path, result.manifest


def _artifact_logits(out: Path, target: dict[str, Any], x: np.ndarray) -> np.ndarray:
    from edgeforge.runtimes import get_runtime
    from edgeforge.targets import resolve

    profile = resolve([target["name"]], [])[0]
    return get_runtime("onnx").open(out / target["artifact"]["path"], profile).run_all(x)


@pytest.mark.slow
def test_a_build_judged_by_macro_f1_records_it_everywhere(f1_build: tuple[Path, dict[str, Any]],
                                                          tiny_assets: Path) -> None:
    path, m = f1_build
    models = m["models"]
    for role in ("teacher", "float_student", "qat_simulation"):
        assert models[role]["metric"] == "macro_f1" and models[role]["value"] == models[role]["scores"]["macro_f1"]
        assert models[role]["scores"]["top1"] == models[role]["top1"] and "top5" not in models[role]["scores"]
    (t,) = m["targets"]
    mt = t["metrics"]
    with np.load(tiny_assets / "test.npz") as z:
        x, y = z["x"], z["y"]
    assert mt["metric"] == "macro_f1"
    assert mt["value"] == pytest.approx(METRICS.get("macro_f1")(_artifact_logits(path.parent, t, x), y))
    assert mt["retention"] == pytest.approx(mt["value"] / models["teacher"]["value"])
    assert mt["reference_value"] == models["qat_simulation"]["value"]
    assert mt["drift_points"] == pytest.approx((mt["value"] - models["qat_simulation"]["value"]) * 100)
    checks = {c["name"]: c for c in t["checks"]}
    assert checks["retention"]["value"] == mt["retention"]
    assert "macro-F1 retention vs teacher" in checks["retention"]["message"]
    assert "|macro-F1 drift| vs qat_simulation" in checks["drift"]["message"]
    assert "top-1 agreement" in checks["agreement"]["message"]  # agreement stays prediction agreement
    report = (path.parent / "report.md").read_text()
    assert "| model | top-1 | macro-F1 | parameters | bytes |" in report and "macro-F1 retention" in report
    assert "macro-F1 retention" in (path.parent / "report.html").read_text()


@pytest.mark.slow
def test_regression_check_on_macro_f1(f1_build: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from edgeforge.cli import main
    from edgeforge.regression import compare

    _, old = f1_build
    new = copy.deepcopy(old)
    new["targets"][0]["metrics"]["value"] -= 0.01  # top-1 unchanged: only the metric regressed
    res = compare(new, old, RegressionConfig())
    assert [c.check for c in res.failures] == ["macro_f1"]
    assert "macro-F1" in res.failures[0].message and "allowed -0.3 pt" in res.failures[0].message
    assert {c.check for c in res.comparisons} >= {"top1", "macro_f1", "retention", "drift"}
    assert compare(new, old, RegressionConfig(max_metric_drop_points=2.0)).exit_code == 0
    n, o = tmp_path / "new.json", tmp_path / "old.json"
    n.write_text(json.dumps(new))
    o.write_text(json.dumps(old))
    assert main(["check", str(n), "--baseline", str(o)]) == 2
    assert main(["check", str(n), "--baseline", str(o), "--max-metric-drop", "2"]) == 0


@pytest.mark.slow
def test_a_top1_baseline_from_before_metrics_is_still_read(f1_build: tuple[Path, dict[str, Any]],
                                                          tmp_path: Path) -> None:
    from edgeforge.regression import check

    _, m = f1_build
    old = copy.deepcopy(m)
    for t in old["targets"]:
        for key in ("metric", "value", "reference_value", "scores"):
            t["metrics"].pop(key)
    new = copy.deepcopy(m)
    for b in (old, new):
        b["host"]["load_average"] = 0.0  # quiet hosts: latency is compared, whatever the test machine's load
    base, cur = tmp_path / "old.json", tmp_path / "new.json"
    base.write_text(json.dumps(old))
    cur.write_text(json.dumps(new))
    res = check(cur, base)
    skipped = {c.check: c for c in res.comparisons if c.skipped}
    assert set(skipped) == {"retention", "drift"} and "judged by top-1, this build by macro-F1" in skipped["drift"].message
    assert res.exit_code == 0 and any(c.check == "top1" and not c.skipped for c in res.comparisons)
