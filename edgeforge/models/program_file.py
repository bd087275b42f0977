"""Load torch.export ``.pt2`` programs without running code hidden in the file.

torch 2.13's ``torch.export.load`` runs code from the archive in four places: payloads marked
``use_pickle`` (``torch.load(weights_only=False)``), the sample inputs (``weights_only=True``
with a silent fallback to ``weights_only=False``), custom/opaque constants (``pickle.loads``),
AOTInductor entries (a shared library is loaded) — plus every symbolic shape expression goes
through ``sympy.sympify``, which evaluates Python, and a graph node's target may name any
attribute reachable from ``torch`` (``torch.os.system``). So the archive is read into memory once,
checked, and only then handed to torch: what we check is exactly what torch loads.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import tokenize
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError


class UnsafeProgramError(ModelError):
    """The .pt2 file holds something that would run code when loaded or called."""


_OPS = re.compile(r"^torch\.ops\.[A-Za-z_]\w*\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)?$")
_BUILTIN_NAMES = {f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg",
                                              "pow", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_")}
_BUILTIN_NAMES |= {f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")}
_BUILTIN_NAMES |= {f"torch.{n}" for n in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite",
                                          "sym_sqrt", "sym_sum", "_sym_sqrt")}
_BUILTINS = {getattr(math if n.startswith("math.") else operator if n.startswith("_operator.") else torch,
                     n.split(".", 1)[1], None) for n in _BUILTIN_NAMES} - {None}
# Names a serialized shape expression may use (sympy classes, assumptions, torch's sympy functions).
_EXPR_NAMES = {"Symbol", "Integer", "Rational", "Float", "True", "False", "positive", "integer", "real",
               "nonnegative", "finite", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
               "oo", "zoo", "nan", "Abs", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv",
               "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
               "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
               "RoundDecimal", "ToFloat", "Identity"}
_SYMBOL = re.compile(r"^[a-z]+\d+$")
_EXPR_OPS = {"+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}


def _expr_ok(expr: str) -> bool:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return False
    for tok in tokens:
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
            continue
        if tok.type == tokenize.NAME and (tok.string in _EXPR_NAMES or _SYMBOL.match(tok.string)):
            continue
        if tok.type == tokenize.STRING and _SYMBOL.match(tok.string.strip("'\"")) and tok.string[0] in "'\"":
            continue
        if tok.type == tokenize.OP and tok.string in _EXPR_OPS:
            continue
        return False
    return True


def _strings(node: Any, keys: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                if k in keys and isinstance(v, str):
                    yield k, v
                else:
                    stack.append(v)
        elif isinstance(cur, list):
            stack.extend(cur)


def _check_model_json(name: str, text: bytes) -> None:
    try:
        doc = json.loads(text)
    except ValueError:
        raise UnsafeProgramError(f"{name} is not valid JSON") from None
    for key, value in _strings(doc, ("target", "as_operator", "expr_str")):
        if key == "expr_str":
            if not _expr_ok(value):
                raise UnsafeProgramError(f"a shape expression is not plain arithmetic ({value[:60]!r}): sympy would evaluate it")
        elif not (_OPS.match(value) or value in _BUILTIN_NAMES) or "__" in value:
            raise UnsafeProgramError(f"the graph calls {value[:60]!r}, which is not a torch operator")


def _check_payload_config(name: str, text: bytes) -> None:
    try:
        entries = json.loads(text).get("config", {})
    except (ValueError, AttributeError):
        raise UnsafeProgramError(f"{name} is not a payload table") from None
    for fqn, meta in entries.items():
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or not path_name.startswith(("weight_", "tensor_")):
            raise UnsafeProgramError(f"'{fqn}' is stored as a pickled object, not as raw tensor bytes")


def check_archive(data: bytes) -> None:
    """Raise UnsafeProgramError unless every part torch.export.load reads is plain data."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelError("not a zip archive") from None
    names = archive.namelist()
    # Every entry sits under one root folder; a top-level entry (the pre-2.8 layout) would send
    # torch.export.load down its legacy path, which unpickles with weights_only=False.
    if any("/" not in n for n in names) or not any(n.endswith("/archive_version") for n in names):
        raise UnsafeProgramError("it is not a torch.export archive of the current format")
    for full in names:
        rel = full.split("/", 1)[1]
        if rel.startswith("data/aotinductor/"):
            raise UnsafeProgramError("it holds AOTInductor code (a compiled library that would be loaded)")
        if re.fullmatch(r"data/(weights|constants)/[^/]+\.pt", rel):
            raise UnsafeProgramError(f"{rel} is a legacy pickled table")
        if re.fullmatch(r"data/(weights|constants)/[^/]+_config\.json", rel):
            _check_payload_config(rel, archive.read(full))
        elif re.fullmatch(r"models/[^/]+\.json", rel):
            _check_model_json(rel, archive.read(full))
        elif rel.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(archive.read(full)), map_location="cpu", weights_only=True)
            except Exception:  # any failure here means torch would retry with weights_only=False
                raise UnsafeProgramError(f"{rel} is not plain tensors (torch would unpickle it with weights_only=False)") from None


def _check_graph(ep: torch.export.ExportedProgram) -> None:
    for gm in ep.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op in ("call_method", "call_module"):
                raise UnsafeProgramError(f"the graph has a {node.op} node ({node.target}); export programs call operators only")
            if node.op == "call_function" and not (
                isinstance(node.target, torch._ops.OpOverload | torch._ops.HigherOrderOperator)
                or node.target in _BUILTINS
            ):
                raise UnsafeProgramError(f"the graph calls {node.target!r}, which is not a torch operator")


def load_program(path: Path, *, trust: bool = False) -> torch.export.ExportedProgram:
    """Read ``path`` once and load it; unless ``trust``, refuse anything that could run code.

    Raises UnsafeProgramError (refused) or ModelError (not a program); messages omit the path.
    """
    data = path.read_bytes()
    if not trust:
        check_archive(data)
    try:
        ep = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(first) from None
    if not trust:
        _check_graph(ep)
    return ep
