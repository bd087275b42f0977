"""What a new user meets on day one: exit codes, config paths, typos, progress in logs, stale outputs,
the lock file, and `edgeforge check` against damaged or unlike manifests (issue 13)."""

from __future__ import annotations

import copy
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from edgeforge.cli import main
from edgeforge.config import RegressionConfig
from edgeforge.errors import EdgeforgeError
from edgeforge.lock import OutputLock
from edgeforge.progress import Progress
from edgeforge.records import SCHEMA_VERSION, json_safe
from edgeforge.regression import compare, read_manifest
from edgeforge.stale import prune_stale_targets
from edgeforge.targets import resolve


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# --- exit codes and arguments -------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["bogus"], ["check", "m.json"], ["build"], ["build", "x.yaml", "--nope"]])
def test_usage_errors_exit_1_not_the_gate_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 1 and "error:" in err


def test_build_help_describes_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "build", "--help")
    assert code == 0 and re.search(r"config\s+the build's edgeforge\.yaml \(or the folder", out)


def test_build_of_a_folder_finds_its_config_or_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeforge.cli import _config_arg

    (tmp_path / "other.yml").write_text("x: 1\n")
    code, _, err = _run(capsys, "build", str(tmp_path))
    assert code == 1 and f"{tmp_path} is a folder without an edgeforge.yaml; YAML files there: other.yml" in err
    assert "Traceback" not in err
    (tmp_path / "edgeforge.yaml").write_text("name: x\n")
    assert _config_arg(str(tmp_path)) == str(tmp_path / "edgeforge.yaml")
    assert _config_arg("some/file.yaml") == "some/file.yaml"


def test_a_mistyped_target_gets_a_suggestion() -> None:
    with pytest.raises(EdgeforgeError, match=r"unknown target 'pixle-8'; did you mean 'pixel-8'\?"):
        resolve(["pixle-8"])
    with pytest.raises(EdgeforgeError) as info:
        resolve(["zzzzzz"])
    assert "did you mean" not in str(info.value) and "available:" in str(info.value)


# --- progress in logs ---------------------------------------------------------------------------


def test_progress_prints_timed_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    p = Progress("distill", 5, stream=buf, every_s=3600, heartbeat_s=3600)
    for e in range(1, 6):
        p.tick(0, 10)
        p.epoch(e, loss=0.5, val_top1=0.9)
    lines = buf.getvalue().splitlines()
    # throttled to the first and the last epoch when epochs are fast
    assert [ln.split(":")[0] for ln in lines] == ["[distill] epoch 1/5", "[distill] epoch 5/5"]
    assert "loss 0.5, val_top1 0.9" in lines[0]
    buf = io.StringIO()
    p = Progress("qat", 3, stream=buf, every_s=0, heartbeat_s=0)
    p.tick(4, 10)
    p.epoch(1, loss=1.0)
    assert buf.getvalue().splitlines()[0].startswith("[qat] epoch 1/3, batch 4/10: still running")
    assert len(buf.getvalue().splitlines()) == 2
    silent = io.StringIO()
    Progress("x", 2, stream=silent, enabled=False).epoch(1, loss=1.0)
    assert silent.getvalue() == ""


def test_fit_reports_every_epoch_to_a_log(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeforge import progress
    from edgeforge.data import Split
    from edgeforge.training import fit

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    split = Split("train", x, y)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, train=split, val=split, step_loss=lambda _i, xb, yb: torch.nn.functional.cross_entropy(model(xb), yb),
        optimizer=opt, epochs=3, batch_size=16, schedule="constant", warmup=0, seed=0, stage="distill",
        show_progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[distill]")]
    assert [ln.split(":")[0] for ln in lines] == [f"[distill] epoch {e}/3" for e in (1, 2, 3)]


# --- output folder and lock ---------------------------------------------------------------------


def test_stale_target_folders_are_pruned_but_user_files_kept(tmp_path: Path) -> None:
    t = tmp_path / "targets"
    for name, files in {"keep-me": ["model.onnx"], "old-onnx": ["model.onnx", ".model.onnx.tmp-123"],
                        "old-coreml": ["model.mlpackage/Manifest.json"], "mine": ["model.tflite", "notes.txt"]}.items():
        for f in files:
            (t / name / f).parent.mkdir(parents=True, exist_ok=True)
            (t / name / f).write_text("x")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "model.onnx").write_text("user data")
    (t / "linked").symlink_to(outside, target_is_directory=True)
    logs: list[str] = []
    removed = prune_stale_targets(tmp_path, {"keep-me"}, logs.append)
    assert sorted(removed) == ["old-coreml", "old-onnx"]
    assert sorted(p.name for p in t.iterdir()) == ["keep-me", "linked", "mine"]
    assert (t / "mine" / "notes.txt").exists() and (outside / "model.onnx").read_text() == "user data"
    assert any("notes.txt" in m for m in logs) and any("removed 2 target folder(s)" in m for m in logs)
    assert prune_stale_targets(tmp_path / "nothing-here", set(), logs.append) == []


def test_lock_file_is_removed_on_release_and_still_excludes(tmp_path: Path) -> None:
    lock = tmp_path / ".edgeforge.lock"
    with OutputLock(tmp_path):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(EdgeforgeError, match="in use by another edgeforge build"), OutputLock(tmp_path):
            pass
    assert not lock.exists()
    with OutputLock(tmp_path):  # a second build after a clean one takes the lock at once
        pass
    assert not lock.exists()


# --- HTML report --------------------------------------------------------------------------------


def test_html_axis_ticks_are_round_and_point_labels_stay_inside() -> None:
    from edgeforge.html_report import _axis_ticks, _scatter, _tick_label

    ticks = _axis_ticks(0.9957, 1.0021)
    assert [_tick_label(t, ticks) for t in ticks] == ["0.994", "0.996", "0.998", "1.000", "1.002", "1.004"]
    ticks = _axis_ticks(20.0, 39.5)
    assert [_tick_label(t, ticks) for t in ticks] == ["20", "25", "30", "35", "40"]
    names = ["a-rather-long-target-name-int8", "another-long-target-fp16", "x"]
    svg = _scatter([(n, 10.0 * (i + 1), 0.99 + 0.005 * i, "#000") for i, n in enumerate(names)], "x", "y", w=520)
    for m in re.finditer(r'<text x="([\d.]+)" y="([\d.]+)" font-size="10" text-anchor="(start|end)">([^<]+)</text>', svg):
        x, y, anchor, label = float(m[1]), float(m[2]), m[3], m[4]
        left, right = (x, x + 6 * len(label)) if anchor == "start" else (x - 6 * len(label), x)
        assert 0 <= left and right <= 520 and 10 <= y <= 320, (label, x, y, anchor)
    assert svg.count("a-rather-long-target-name-int8</text>") == 1


# --- check: damaged manifests -------------------------------------------------------------------


def _target(name: str, top1: float = 0.98, size: int = 30000, measured_on: str = "host") -> dict[str, Any]:
    latency = {"measured_on": measured_on, "p50_ms": 0.01, "p90_ms": 0.012, "threads": 1, "batch": 1}
    return {"name": name, "status": "validated", "metrics": {
        "top1": top1, "retention": top1 / 0.99, "drift_points": 0.0, "reference": "qat_simulation",
        "size_bytes": size, "latency": latency}}


def _manifest(**host: Any) -> dict[str, Any]:
    cpu = {"model": host.pop("model", "AMD EPYC"), "int8_class": host.pop("int8_class", "x86+avx2")}
    return {"schema": SCHEMA_VERSION, "name": "digits", "host": {"machine": "x86_64", "cpus": 2, "cpu": cpu},
            "data": {"num_classes": 10, "sha256": "d" * 64}, "models": {"teacher": {"sha256": "t" * 64}},
            "targets": [_target("onnx-cpu-int8"), _target("pixel-8"), _target("iphone-15-pro-int8")]}


def _write(tmp: Path, name: str, m: Any) -> Path:
    p = tmp / name
    p.write_text(m if isinstance(m, str) else json.dumps(m))
    return p


def _damaged() -> dict[str, tuple[Any, str]]:
    missing = _manifest()
    del missing["data"]["sha256"]
    wrong = dict(_manifest(), targets={"onnx-cpu-int8": {}})
    zero = _manifest()
    zero["targets"][1]["metrics"]["size_bytes"] = 0
    bad_lat = _manifest()
    bad_lat["targets"][0]["metrics"]["latency"] = {"p50_ms": "fast"}
    nan = json.dumps(_manifest()).replace('"top1": 0.98', '"top1": NaN', 1)
    return {
        "missing": (missing, "key 'data.sha256' is missing"),
        "targets-type": (wrong, "key 'targets' is dict, not list"),
        "zero-size": (zero, "key 'targets[1] (pixel-8).metrics.size_bytes' is 0"),
        "latency": (bad_lat, "key 'targets[0] (onnx-cpu-int8).metrics.latency.measured_on' is missing"),
        "nan": (nan, "metrics.top1' is nan, not a finite number"),
        "deep": ('{"a":' * 100000 + "1" + "}" * 100000, "nested too deeply"),
        "empty": ("", "the file is empty"),
        "list": ("[1, 2]", "manifest schema 'list' is not"),
    }


@pytest.mark.parametrize("case", list(_damaged()))
def test_damaged_manifest_is_one_line_exit_1(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, expected = _damaged()[case]
    good = _write(tmp_path, "good.json", _manifest())
    bad = _write(tmp_path, "bad.json", content)
    with pytest.raises(EdgeforgeError, match=re.escape(expected)):
        read_manifest(bad, "baseline")
    code, _, err = _run(capsys, "check", str(good), "--baseline", str(bad))
    assert code == 1 and expected in err and str(bad) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_junit_pointing_at_a_folder_is_refused_before_anything(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, "good.json", _manifest())
    code, _, err = _run(capsys, "check", str(good), "--baseline", str(good), "--junit", str(tmp_path))
    assert code == 1 and f"--junit {tmp_path}: is a folder; give a file path" in err and "Traceback" not in err
    code, _, err = _run(capsys, "check", str(good), "--baseline", str(good), "--markdown", str(tmp_path / "no/x.md"))
    assert code == 1 and "does not exist" in err


def test_json_safe_turns_nan_into_null() -> None:
    data = json_safe({"per_class_top1": [1.0, float("nan")], "x": float("inf"), "n": (1, 2)})
    assert json.dumps(data, allow_nan=False) == '{"per_class_top1": [1.0, null], "x": null, "n": [1, 2]}'


# --- check: builds that are not alike ------------------------------------------------------------


def test_a_different_teacher_is_said_first_and_is_not_a_top1_regression(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    old = _manifest()
    new = copy.deepcopy(old)
    new["models"]["teacher"]["sha256"] = "u" * 64
    for t in new["targets"]:
        t["metrics"]["top1"] -= 0.0037  # the fresh-machine teacher of issue 13: 99.63% -> 99.44%
    res = compare(new, old, RegressionConfig())
    assert res.differences[0].startswith("the builds do not share a teacher (sha256 tttttttttttt... in the baseline")
    top1 = [c for c in res.comparisons if c.check == "top1"]
    assert top1 and all(c.skipped and c.passed and "different teachers" in c.message for c in top1)
    # retention is relative to the teacher: a real loss of it still fails
    new["targets"][0]["metrics"]["retention"] -= 0.01
    assert {(c.target, c.check) for c in compare(new, old, RegressionConfig()).failures} == {("onnx-cpu-int8", "retention")}
    code, out, _ = _run(capsys, "check", str(_write(tmp_path, "n.json", new)), "--baseline",
                        str(_write(tmp_path, "o.json", old)))
    assert code == 2 and out.splitlines()[0].startswith("differs: the builds do not share a teacher")


def test_the_same_model_changing_top1_is_a_regression() -> None:
    old = _manifest()
    new = copy.deepcopy(old)
    new["targets"][2]["metrics"]["top1"] -= 0.0037
    res = compare(new, old, RegressionConfig())
    assert not res.differences
    assert [(c.target, c.check) for c in res.failures] == [("iphone-15-pro-int8", "top1")]
    assert "top-1 98.00% -> 97.63% (-0.37 pt, allowed -0.3 pt)" in res.failures[0].message


def test_different_data_and_host_class_are_named() -> None:
    old = _manifest()
    new = _manifest(model="Intel Xeon Platinum 8481C", int8_class="x86+amx")
    new["data"]["sha256"] = "e" * 64
    res = compare(new, old, RegressionConfig())
    assert res.differences[0].startswith("the builds evaluated different data (sha256 dddddddddddd... vs eeeeeeeeeeee")
    assert ("different host classes ('AMD EPYC, 2 cpu(s), x86+avx2' vs 'Intel Xeon Platinum 8481C, 2 cpu(s), "
            "x86+amx')") in res.differences[1]
    lat = [c for c in res.comparisons if c.check == "latency"]
    assert len(lat) == 3 and all(c.skipped and "measured on different machines" in c.message for c in lat)
    same_class = compare(_manifest(model="AMD EPYC 9654"), old, RegressionConfig())
    assert same_class.differences == ["measured on different machines: host 'AMD EPYC, 2 cpu(s), x86+avx2' vs "
                                      "'AMD EPYC 9654, 2 cpu(s), x86+avx2': latency is not compared"]


def test_latency_messages_say_which_build_measured_it() -> None:
    old, new = _manifest(), _manifest()
    old["targets"][0]["metrics"]["latency"] = new["targets"][0]["metrics"]["latency"] = None
    old["targets"][1]["metrics"]["latency"] = None
    new["targets"][2]["metrics"]["latency"]["measured_on"] = "ssh:pi@board"
    msgs = {c.target: c.message for c in compare(new, old, RegressionConfig()).comparisons if c.check == "latency"}
    assert msgs == {"onnx-cpu-int8": "latency not measured in either build",
                    "pixel-8": "latency measured only in this build",
                    "iphone-15-pro-int8": "not compared: measured on 'host' in the baseline, 'ssh:pi@board' here"}


def test_host_latency_from_a_busy_machine_is_not_compared() -> None:
    old, new = _manifest(), _manifest()
    slower = new["targets"][2]["metrics"]["latency"]
    slower["p50_ms"], slower["p90_ms"] = slower["p50_ms"] * 3, slower["p90_ms"] * 3
    old["host"]["load_average"], new["host"]["load_average"] = 0.2, 0.4  # quiet: 0.1 and 0.2 per CPU
    assert [c.target for c in compare(new, old, RegressionConfig()).failures] == ["iphone-15-pro-int8"] * 2
    new["host"]["load_average"] = 6.48
    res = compare(new, old, RegressionConfig())
    assert res.exit_code == 0 and not res.failures
    assert ("the host was busy in this build (load average 6.48 on 2 CPUs): host latency is compared only between "
            "builds on a quiet machine (load per CPU under 0.5)") in res.differences
    lat = {c.target: c.message for c in res.comparisons if c.check == "latency"}
    assert lat["iphone-15-pro-int8"] == "not compared: the host was busy in this build (load average 6.48 on 2 CPUs)"
    del old["host"]["load_average"]  # a baseline from before load was recorded: compared as before unless busy now
    new["host"]["load_average"] = 0.4
    assert len(compare(new, old, RegressionConfig()).failures) == 2


def test_only_common_compares_the_shared_targets_and_lists_the_rest(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    old = _manifest()
    new = dict(_manifest(), targets=[_target("pixel-8"), _target("x86-server-int8")])
    full = compare(new, old, RegressionConfig())
    assert {(c.target, c.check) for c in full.failures} == {("onnx-cpu-int8", "present"), ("iphone-15-pro-int8", "present")}
    part = compare(new, old, RegressionConfig(), only_common=True)
    assert part.exit_code == 0 and part.skipped_targets == ["onnx-cpu-int8", "iphone-15-pro-int8"]
    assert {c.target for c in part.comparisons} == {"pixel-8"}
    assert "not compared, not in this build: onnx-cpu-int8, iphone-15-pro-int8" in part.notes
    assert "new, not in the baseline: x86-server-int8" in part.notes
    n, o = _write(tmp_path, "n.json", new), _write(tmp_path, "o.json", old)
    assert _run(capsys, "check", str(n), "--baseline", str(o))[0] == 2
    code, out, _ = _run(capsys, "check", str(n), "--baseline", str(o), "--only-common")
    assert code == 0 and "note not compared, not in this build: onnx-cpu-int8, iphone-15-pro-int8" in out


@pytest.mark.slow
def test_a_test_split_missing_a_class_writes_null_not_nan(tiny_assets: Path, tmp_path: Path) -> None:
    """Per-class top-1 of a class absent from the test split is undefined: strict JSON gets null, never NaN."""
    import numpy as np

    from edgeforge.pipeline import build

    from conftest import tiny_config, write_config

    test = np.load(tiny_assets / "test.npz")
    keep = test["y"] != 3
    np.savez(tmp_path / "test.npz", x=test["x"][keep], y=test["y"][keep])
    cfg = tiny_config(tiny_assets, tmp_path / "out", targets=["onnx-cpu-fp32"], **{"data.test": str(tmp_path / "test.npz"),
                      "data.class_names": ["a", "b", "c", "d"], "distill.epochs": 2, "qat.epochs": 1})
    build(write_config(tmp_path / "edgeforge.yaml", cfg), log=lambda _m: None)

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in manifest.json")

    m = json.loads((tmp_path / "out" / "manifest.json").read_text(), parse_constant=refuse)
    assert m["models"]["teacher"]["per_class_top1"][3] is None
    assert m["targets"][0]["metrics"]["per_class_top1"][3] is None
    assert read_manifest(tmp_path / "out" / "manifest.json", "new")["name"] == "tiny"
