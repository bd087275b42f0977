"""edgeforge check: regression of a build against a baseline manifest; JUnit and Markdown outputs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgeforge.config import RegressionConfig
from edgeforge.errors import EdgeforgeError
from edgeforge.regression import check, compare, to_junit, to_markdown

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def manifest(tiny_build) -> dict:  # type: ignore[no-untyped-def]
    m = copy.deepcopy(tiny_build[1].manifest)
    m["host"]["load_average"] = 0.0  # as if built on a quiet machine (a busy one: test_first_run)
    return m


def _write(tmp: Path, name: str, m: dict) -> Path:
    p = tmp / name
    p.write_text(json.dumps(m))
    return p


def test_identical_manifests_do_not_regress(manifest: dict) -> None:
    res = compare(manifest, copy.deepcopy(manifest), RegressionConfig())
    assert res.exit_code == 0 and res.comparisons
    assert {c.check for c in res.comparisons} >= {"top1", "retention", "drift", "size", "latency_p50", "latency_p90"}


def test_accuracy_size_and_latency_regressions_are_listed(manifest: dict) -> None:
    new = copy.deepcopy(manifest)
    t = new["targets"][1]["metrics"]
    t["top1"] -= 0.01
    t["retention"] -= 0.01
    t["size_bytes"] = int(t["size_bytes"] * 1.2)
    t["latency"]["p90_ms"] *= 1.5
    res = compare(new, manifest, RegressionConfig())
    failed = {(c.target, c.check) for c in res.failures}
    name = manifest["targets"][1]["name"]
    assert failed == {(name, "top1"), (name, "retention"), (name, "size"), (name, "latency_p90")}
    assert res.exit_code == 2
    # a looser limit lets the top-1 drop through
    res = compare(new, manifest, RegressionConfig(max_top1_drop_points=2.0, max_retention_drop=0.02,
                                                  max_size_growth=0.5, max_latency_growth=1.0))
    assert res.exit_code == 0


def test_latency_on_another_machine_is_not_compared(manifest: dict) -> None:
    new = copy.deepcopy(manifest)
    new["host"]["cpus"] = 64
    new["targets"][0]["metrics"]["latency"]["p50_ms"] *= 10
    res = compare(new, manifest, RegressionConfig())
    lat = [c for c in res.comparisons if c.check.startswith("latency")]
    assert lat and all(c.skipped and c.passed for c in lat)
    assert "different machines" in lat[0].message


def test_missing_target_and_failed_status(manifest: dict) -> None:
    new = copy.deepcopy(manifest)
    new["targets"] = [dict(new["targets"][1], status="failed", reason="boom", metrics=None)]
    res = compare(new, manifest, RegressionConfig())
    checks = {(c.target, c.check) for c in res.failures}
    assert (manifest["targets"][0]["name"], "present") in checks
    assert (manifest["targets"][1]["name"], "status") in checks


def test_different_models_and_schemas_are_errors(manifest: dict, tmp_path: Path) -> None:
    other = copy.deepcopy(manifest)
    other["name"] = "another-model"
    with pytest.raises(EdgeforgeError, match="different models"):
        compare(other, manifest, RegressionConfig())
    old_schema = dict(manifest, schema="edgeforge.manifest/0")
    with pytest.raises(EdgeforgeError, match="schema"):
        check(_write(tmp_path, "a.json", manifest), _write(tmp_path, "b.json", old_schema))


def test_junit_and_markdown(manifest: dict) -> None:
    new = copy.deepcopy(manifest)
    new["targets"][0]["metrics"]["top1"] -= 0.05
    res = compare(new, manifest, RegressionConfig())
    suite = ET.fromstring(to_junit(res)).find("testsuite")
    assert suite is not None and int(suite.get("failures", "0")) == len(res.failures) >= 1
    cases = suite.findall("testcase")
    assert len(cases) == len(res.comparisons)
    failed = [c for c in cases if c.find("failure") is not None]
    assert failed[0].get("classname") == manifest["targets"][0]["name"] and failed[0].get("name") == "top1"
    md = to_markdown(res, "new.json", "old.json")
    assert "regressed" in md and "**FAIL**" in md


def test_cli_check_exit_codes(manifest: dict, tmp_path: Path) -> None:
    old = _write(tmp_path, "old.json", manifest)
    worse = copy.deepcopy(manifest)
    worse["targets"][1]["metrics"]["top1"] -= 0.02
    new = _write(tmp_path, "new.json", worse)
    run = [sys.executable, "-m", "edgeforge", "check"]
    ok = subprocess.run(run + [str(old), "--baseline", str(old)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(run + [str(new), "--baseline", str(old), "--junit", str(tmp_path / "j.xml"),
                                "--markdown", str(tmp_path / "s.md")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert f"FAIL {manifest['targets'][1]['name']}: top1:" in bad.stdout
    assert ET.parse(tmp_path / "j.xml").getroot().tag == "testsuites"
    loose = subprocess.run(run + [str(new), "--baseline", str(old), "--max-top1-drop", "5", "--max-retention-drop", "1"],
                           capture_output=True, text=True, cwd=ROOT)
    assert loose.returncode == 0, loose.stdout
    missing = subprocess.run(run + [str(new), "--baseline", str(tmp_path / "nope.json")], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 1 and "baseline manifest not found" in missing.stderr
