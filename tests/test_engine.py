"""The stage engine with fake stages: keys, caching, resume, tamper detection, a failing stage recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeforge.cache import StageCache
from edgeforge.engine import Engine, PlanError, Stage, check_order
from edgeforge.errors import EdgeforgeError


class Write(Stage[str]):
    kind = "write"

    def __init__(self, name: str, text: str, after: tuple[str, ...] = (), calls: list[str] | None = None) -> None:
        super().__init__(name, after)
        self.text, self.calls = text, calls if calls is not None else []

    def key_inputs(self) -> dict[str, Any]:
        return {"text": self.text}

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        assert folder is not None
        self.calls.append(self.name)
        value = self.text + "".join(inputs.values())
        (folder / "out.txt").write_text(value)
        return {"length": len(value)}

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> str:
        assert folder is not None
        return (folder / "out.txt").read_text()


class Boom(Stage[None]):
    kind = "boom"

    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        raise EdgeforgeError("no converter for op frobnicate", target="t1", op="frobnicate")


def _engine(tmp_path: Path, log: list[str] | None = None) -> Engine:
    return Engine(StageCache(tmp_path / "cache"), (log if log is not None else []).append)


def _pipeline(calls: list[str], a: str = "a", b: str = "b") -> list[Stage[str]]:
    return [Write("first", a, calls=calls), Write("second", b, ("first",), calls)]


def test_outputs_flow_and_a_rerun_comes_from_the_cache(tmp_path: Path) -> None:
    calls: list[str] = []
    e = _engine(tmp_path)
    out = [e.run(s) for s in _pipeline(calls)]
    assert out[1].value == "ba" and calls == ["first", "second"]
    log: list[str] = []
    e2 = _engine(tmp_path, log)
    out2 = [e2.run(s) for s in _pipeline(calls)]
    assert calls == ["first", "second"], "nothing re-ran"
    assert [r.cached for r in e2.runs] == [True, True] and out2[1].value == "ba"
    assert any("(cached)" in line for line in log)


def test_an_upstream_change_reruns_downstream_only(tmp_path: Path) -> None:
    calls: list[str] = []
    e = _engine(tmp_path)
    for s in _pipeline(calls):
        e.run(s)
    calls.clear()
    e2 = _engine(tmp_path)
    for s in _pipeline(calls, a="A"):
        e2.run(s)
    assert calls == ["first", "second"] and e2.outputs["second"] == "bA"
    calls.clear()
    e3 = _engine(tmp_path)
    for s in _pipeline(calls, a="A", b="B"):
        e3.run(s)
    assert calls == ["second"], "only the stage whose input changed"


def test_tampered_cache_entry_is_rebuilt_never_trusted(tmp_path: Path) -> None:
    calls: list[str] = []
    e = _engine(tmp_path)
    e.run(Write("first", "a", calls=calls))
    entry = next((tmp_path / "cache").glob("write-*"))
    (entry / "out.txt").write_text("payload")
    log: list[str] = []
    e2 = _engine(tmp_path, log)
    assert e2.run(Write("first", "a", calls=calls)).value == "a"
    assert calls == ["first", "first"] and any("not the one edgeforge wrote" in line for line in log)
    done = json.loads((entry / "done.json").read_text())
    done["record"]["length"] = 99  # a record edited without its files is still the stage's own files
    (entry / "done.json").write_text(json.dumps(done))
    (entry / "extra.bin").write_bytes(b"x")
    e3 = _engine(tmp_path, log)
    e3.run(Write("first", "a", calls=calls))
    assert calls[-1] == "first" and len(calls) == 3


def test_a_failing_stage_is_recorded_and_others_go_on(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    e.run(Write("first", "a"))
    err = e.try_run(Boom("boom:t1", ("first",)))
    assert isinstance(err, EdgeforgeError) and err.op == "frobnicate"
    run = e.run_of("boom:t1")
    assert run is not None and run.status == "failed" and run.error and run.error["op"] == "frobnicate"
    assert e.run(Write("third", "c", ("first",))).value == "ca"


def test_killed_stage_leaves_no_entry_and_resumes(tmp_path: Path) -> None:
    class Killed(Write):
        def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
            assert folder is not None
            (folder / "half.txt").write_text("partial")
            raise KeyboardInterrupt

    e = _engine(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        e.run(Killed("first", "a"))
    assert not list((tmp_path / "cache").glob("*")), "no partial entry, no temp folder"
    calls: list[str] = []
    assert _engine(tmp_path).run(Write("first", "a", calls=calls)).value == "a" and calls == ["first"]


def test_plan_order_is_checked_before_anything_runs() -> None:
    with pytest.raises(PlanError, match="second needs first"):
        check_order([Write("second", "b", ("first",)), Write("first", "a")])
    with pytest.raises(PlanError, match="planned twice"):
        check_order([Write("first", "a"), Write("first", "a")])
