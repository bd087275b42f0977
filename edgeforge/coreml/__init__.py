"""A reference interpreter for saved Core ML ML programs (numpy), for hosts without Core ML.

``program`` parses an .mlpackage (spec + weight blobs), ``kernels`` holds one numpy kernel per MIL
op, ``interpreter`` runs them. An op without a kernel raises UnsupportedOp (a RuntimeUnavailable),
so the artifact is reported unvalidated, never passed.
"""

from __future__ import annotations

from .interpreter import InterpreterError, ReferenceInterpreter, UnsupportedOp, missing_kernels
from .kernels import KERNELS
from .program import Program, ProgramError, load_program

__all__ = ["KERNELS", "InterpreterError", "Program", "ProgramError", "ReferenceInterpreter", "UnsupportedOp",
           "load_program", "missing_kernels"]
