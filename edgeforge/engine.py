"""The stage engine: the only place that computes cache keys, times, caches, records and resumes.

A stage declares its name, the stages whose outputs it reads (``after``), the inputs that decide
its output (``key_inputs``), how to produce its output into a folder and how to load it back.
A stage's key hashes its own inputs and its predecessors' keys, so an upstream change re-runs
everything downstream and nothing else. Whole plans are checked before anything runs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .cache import StageCache, stage_key
from .errors import EdgeforgeError, unexpected
from .records import StageRun

T = TypeVar("T")
Log = Callable[[str], None]


class Stage(ABC, Generic[T]):
    """One step of a build. ``kind`` names its cache folders; ``name`` is unique within a build."""

    kind: str = ""
    cacheable: bool = True
    # Set by the engine before ``produce``: a folder of this stage's key that outlives a killed run
    # (epoch checkpoints); the engine removes it once the stage's output is complete.
    resume_dir: Path | None = None

    def __init__(self, name: str | None = None, after: Sequence[str] = ()) -> None:
        self.name = name or self.kind
        self.after = tuple(after)

    def key_inputs(self) -> dict[str, Any]:
        """Everything besides the predecessors' outputs that decides this stage's output."""
        return {}

    @abstractmethod
    def produce(self, folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        """Write the output into ``folder`` (None for uncached stages) and return its JSON record."""

    def load(self, folder: Path | None, record: dict[str, Any], inputs: dict[str, Any]) -> T:
        """Rebuild the output from a folder and record (fresh or cached). Default: the record itself."""
        return record  # type: ignore[return-value]

    def describe(self, record: dict[str, Any]) -> str:
        """One log line about a finished stage's result ('' for none)."""
        return ""

    def announce(self) -> str:
        """One log line said when the stage starts real work (not when it comes from the cache)."""
        return ""


class PlanError(EdgeforgeError):
    """The stages of a build do not form a valid order (a bug in edgeforge, not the user's input)."""


def check_order(stages: Sequence[Stage[Any]], done: Sequence[str] = ()) -> None:
    """Every predecessor must run earlier; names must be unique. Checked before anything runs."""
    seen = set(done)
    for s in stages:
        missing = [a for a in s.after if a not in seen]
        if missing:
            raise PlanError(f"stage {s.name} needs {', '.join(missing)}, which do not run before it")
        if s.name in seen:
            raise PlanError(f"stage {s.name} is planned twice")
        seen.add(s.name)


@dataclass
class Outcome(Generic[T]):
    value: T
    record: dict[str, Any]
    run: StageRun


@dataclass
class Engine:
    cache: StageCache
    log: Log
    keys: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    runs: list[StageRun] = field(default_factory=list)

    def key_of(self, stage: Stage[Any]) -> str:
        upstream = {a: self.keys[a] for a in stage.after if a in self.keys}
        return stage_key(stage.kind, inputs=stage.key_inputs(), upstream=upstream)

    def run(self, stage: Stage[T]) -> Outcome[T]:
        """Run (or load from the cache) one stage whose predecessors have run; raises what it raises."""
        check_order([stage], list(self.outputs))
        inputs = {a: self.outputs[a] for a in stage.after}
        t0 = time.perf_counter()
        try:
            if stage.cacheable:
                key = self.key_of(stage)
                stage.resume_dir = self.cache.partial(stage.kind, key)
                folder, record, cached = self.cache.run(stage.kind, key, lambda f: self._produce(stage, f, inputs),
                                                        on_invalid=lambda why: self.log(f"[{stage.name}] {why}"))
                value = stage.load(folder, record, inputs)
                self.keys[stage.name] = key
            else:
                key, folder, cached = None, None, False
                record = self._produce(stage, None, inputs)
                value = stage.load(None, record, inputs)
        except BaseException as exc:
            err = exc.fields() if isinstance(exc, EdgeforgeError) else {"error": type(exc).__name__,
                                                                         "message": unexpected(exc)}
            self.runs.append(StageRun(stage.name, None, False, time.perf_counter() - t0, "failed", err))
            raise
        run = StageRun(stage.name, key, cached, time.perf_counter() - t0)
        self.runs.append(run)
        self.outputs[stage.name] = value
        note = stage.describe(record) or ("" if cached else "done")
        when = "(cached)" if cached else f"in {run.seconds:.1f} s"
        self.log(f"[{stage.name}] {note} {when}" if note else f"[{stage.name}] {when}")
        return Outcome(value, record, run)

    def _produce(self, stage: Stage[Any], folder: Path | None, inputs: dict[str, Any]) -> dict[str, Any]:
        start = stage.announce()
        if start:
            self.log(f"[{stage.name}] {start}")
        return stage.produce(folder, inputs)

    def is_cached(self, stage: Stage[Any]) -> bool:
        """Whether ``run`` would load the stage from an intact cache entry instead of producing it."""
        return stage.cacheable and self.cache.lookup(stage.kind, self.key_of(stage)) is not None

    def try_run(self, stage: Stage[T]) -> Outcome[T] | EdgeforgeError:
        """Run a stage whose failure must not stop the others (a target's); the failure is recorded."""
        try:
            return self.run(stage)
        except KeyboardInterrupt:
            raise
        except EdgeforgeError as exc:
            return exc
        except Exception as exc:
            return EdgeforgeError(unexpected(exc))

    def run_of(self, name: str) -> StageRun | None:
        return next((r for r in reversed(self.runs) if r.name == name), None)
