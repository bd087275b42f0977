"""Execute a loaded ML program op by op with the numpy kernels: the Linux stand-in for Core ML.

Every op output is cast to the dtype the program declares for it, so an fp16 program rounds to
float16 between ops as Core ML's fp16 compute does (accumulation inside a kernel is float32 here;
the device's exact accumulation order is not reproduced, hence the fp16 tolerances in the tests).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeforgeError, RuntimeUnavailable
from .kernels import KERNELS, Args
from .program import Op, Program, load_program

CONSTANT_OPS = ("const", "constexpr_")


class UnsupportedOp(RuntimeUnavailable):
    """The program holds an op the reference interpreter has no kernel for: the artifact stays unvalidated."""

    def __init__(self, ops: list[str]) -> None:
        self.ops = ops
        names = ", ".join(ops)
        super().__init__(f"op{'s' if len(ops) > 1 else ''} {names} {'have' if len(ops) > 1 else 'has'} no reference kernel")


class InterpreterError(EdgeforgeError):
    """A kernel failed or produced a shape the program does not declare (a bug to report)."""


def missing_kernels(program: Program) -> list[str]:
    missing = {op.type for op in program.ops if op.type not in KERNELS or op.has_blocks}
    return sorted(missing)


class ReferenceInterpreter:
    def __init__(self, program: Program | str | Path) -> None:
        self.program = program if isinstance(program, Program) else load_program(program)
        missing = missing_kernels(self.program)
        if missing:
            raise UnsupportedOp(missing)
        # Constants (and constexpr ops over constants) are evaluated once, here.
        self._consts: dict[str, Any] = {}
        self._ops: list[Op] = []
        for op in self.program.ops:
            if op.type.startswith(CONSTANT_OPS) and all(
                kind == "value" or ref in self._consts for args in op.inputs.values() for kind, ref in args
            ):
                self._store(op, self._execute(op, self._consts), self._consts)
            else:
                self._ops.append(op)
        self.input_name, self.input_type = self.program.inputs[0]
        self._produced = {name for op in self.program.ops for name, _ in op.outputs} | set(self._consts)

    def _execute(self, op: Op, env: dict[str, Any]) -> Any:
        values: dict[str, list[Any]] = {k: [v] for k, v in op.attributes.items() if k != "name"}
        for k, args in op.inputs.items():
            values[k] = [env[ref] if kind == "name" else ref for kind, ref in args]
        try:
            return KERNELS[op.type](Args(values))
        except Exception as exc:
            raise InterpreterError(f"op {op.type} '{op.name}': {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _store(op: Op, result: Any, env: dict[str, Any]) -> None:
        results = result if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(op.outputs):
            raise InterpreterError(f"op {op.type} '{op.name}': {len(results)} outputs, program declares {len(op.outputs)}")
        for (name, tt), value in zip(op.outputs, results):
            if isinstance(value, str) or tt.np_dtype is None:
                env[name] = value
                continue
            arr = np.asarray(value).astype(tt.np_dtype, copy=False)
            if tt.shape is not None and (
                arr.ndim != len(tt.shape) or any(d is not None and d != s for d, s in zip(tt.shape, arr.shape))
            ):
                raise InterpreterError(f"op {op.type} '{op.name}': output {name} has shape {arr.shape}, "
                                       f"program declares {tt.shape}")
            env[name] = arr

    def constant(self, name: str) -> Any:
        """A constant of the program (a const op, or a constexpr op over constants) by its output name."""
        return self._consts[name]

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray, keep: Collection[str] = (),
            replace: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The program's outputs, plus the intermediate values named in ``keep`` (MIL op output names).

        Reading an intermediate changes nothing in how the program runs (unlike a runtime that fuses
        around its outputs), so these are the very values the outputs were computed from. ``replace``
        feeds the ops after a value other numbers (the layer report feeds each layer the reference's
        inputs); a kept value is still the one the program computed.
        """
        if not isinstance(inputs, dict):
            inputs = {self.input_name: inputs}
        replace = replace or {}
        unknown = sorted((set(keep) | set(replace)) - self._produced)
        if unknown:
            raise InterpreterError(f"no op of this program outputs {', '.join(unknown)}")
        env = dict(self._consts)
        for name, tt in self.program.inputs:
            if name not in inputs:
                raise InterpreterError(f"input '{name}' is missing (program inputs: "
                                       f"{', '.join(n for n, _ in self.program.inputs)})")
            env[name] = np.asarray(inputs[name]).astype(tt.np_dtype, copy=False)
        computed: dict[str, np.ndarray] = {}
        for op in self._ops:
            self._store(op, self._execute(op, env), env)
            for name in (n for n, _ in op.outputs if n in replace):
                computed[name] = env[name]
                env[name] = np.asarray(replace[name]).astype(env[name].dtype)
        return {name: computed.get(name, env[name]) for name in (*self.program.outputs, *keep)}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """First output for a single input, as float32."""
        return np.asarray(self.run(x)[self.program.outputs[0]], dtype=np.float32)
