"""Build the teacher and the student from the config and check that they fit the data."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import LoadedConfig
from ..data.batch import Inputs, call, count, rows, shapes
from ..errors import ConfigError, ModelError
from ..factories import call_factory
from ..inputs import InputSpec
from .program_file import UnsafeProgramError, load_program
from .students import STUDENTS


def load_checkpoint(path: Path, *, trust: bool, key: str) -> Any:
    if not path.is_file():
        raise ModelError(f"{key}: checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"{key}: checkpoint {path} is empty (0 bytes); re-save it with torch.save(model.state_dict(), ...)")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{key}: {path} is not a readable checkpoint (not a torch.save archive); "
                         "re-save it with torch.save(model.state_dict(), ...)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust:
            raise ModelError(f"{key}: {path} is not a readable checkpoint ({exc})") from None
        culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it references {culprit.group(1)}" if culprit else "it holds pickled objects or code"
        raise ModelError(
            f"{key}: {path} was refused by torch.load(weights_only=True): {what}; save a plain state_dict, "
            "or set teacher.trust_checkpoint: true only if you trust the file (it can run code)"
        ) from None
    except Exception as exc:
        raise ModelError(f"{key}: {path} is not a readable checkpoint ({type(exc).__name__}: {str(exc)[:160]})") from None


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict):
                obj = inner
                break
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ModelError(f"teacher.checkpoint: {path} holds no state_dict (a mapping of parameter names to tensors)")


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, factory: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelError(
            f"teacher.checkpoint: {path} does not match the model built by {factory} ({'; '.join(parts)}); "
            "check teacher.factory and teacher.kwargs"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ModelError(
                f"teacher.checkpoint: {path}: '{k}' has shape {tuple(v.shape)} but {factory} builds "
                f"{tuple(own[k].shape)}; check teacher.kwargs"
            )
    model.load_state_dict(state)


def load_teacher(lc: LoadedConfig) -> nn.Module:
    t = lc.config.teacher
    if t.factory:
        model = call_factory(t.factory, "teacher.factory", **t.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"teacher.factory: {t.factory}() returned {type(model).__name__}, not a torch.nn.Module")
        if t.checkpoint:
            path = lc.resolve(t.checkpoint)
            state = _state_dict_of(load_checkpoint(path, trust=t.trust_checkpoint, key="teacher.checkpoint"), path)
            _load_state(model, state, path, t.factory)
        return model.eval()
    if t.torchscript:
        path = lc.resolve(t.torchscript)
        if not path.is_file():
            raise ModelError(f"teacher.torchscript: file not found: {path}")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise ModelError(f"teacher.torchscript: {path} is not a TorchScript file ({str(exc).splitlines()[0][:160]})") from None
    return _load_teacher_program(lc.resolve(t.program or ""), trust=t.trust_checkpoint)


def _load_teacher_program(path: Path, *, trust: bool) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"teacher.program: file not found: {path}")
    try:
        return load_program(path, trust=trust).module()
    except UnsafeProgramError as exc:
        raise ModelError(
            f"teacher.program: {path} was refused: {exc}; re-save it with torch.export.save from a model of plain "
            "tensors and torch operators, or set teacher.trust_checkpoint: true only if you trust the file (it can run code)"
        ) from None
    except ModelError as exc:
        raise ModelError(f"teacher.program: {path} is not a torch.export program ({exc})") from None


def token_defaults(inputs: tuple[InputSpec, ...]) -> dict[str, int]:
    """``vocab_size`` and ``max_len`` for a token-input student, read from the data's tokenizer."""
    ids = next((i for i in inputs if i.vocab_size is not None), None)
    return {"vocab_size": int(ids.vocab_size), "max_len": int(ids.shape[0])} if ids and ids.vocab_size else {}


def embedding_from_teacher(student: nn.Module, teacher: nn.Module, name: str) -> None:
    """student.embedding_from_teacher: the teacher's token table, PCA-projected, as the student's."""
    from .families.transformer import TransformerClassifier, init_from_teacher

    modules = dict(teacher.named_modules())
    table = modules.get(name)
    if not isinstance(table, nn.Embedding):
        near = [n for n, m in modules.items() if isinstance(m, nn.Embedding)][:6]
        raise ConfigError(f"teacher has no nn.Embedding named '{name}'", key="student.embedding_from_teacher",
                          fix=f"use one of: {', '.join(near) or 'none (the teacher has no embedding)'}")
    if not isinstance(student, TransformerClassifier):
        raise ConfigError("only the built-in transformer student takes an embedding from the teacher",
                          key="student.embedding_from_teacher", fix="set student.family: transformer or drop it")
    init_from_teacher(student, table.weight)


def build_student(lc: LoadedConfig, in_channels: int, num_classes: int,
                  defaults: dict[str, int] | None = None) -> nn.Module:
    """The configured student; ``defaults`` (vocab_size, max_len of token data) fill a transformer's kwargs."""
    s = lc.config.student
    if s.factory:
        model = call_factory(s.factory, "student.factory", **s.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"student.factory: {s.factory}() returned {type(model).__name__}, not a torch.nn.Module")
        return model
    try:
        builder = STUDENTS.get(s.family or "convnet")
    except Exception as exc:
        raise ConfigError(f"student.family: {exc}") from None
    extra = {**(defaults or {}), **s.kwargs} if s.family == "transformer" else s.kwargs
    return builder(in_channels, num_classes, width=s.width, depth=s.depth, **extra)


def _run_once(model: nn.Module, x: Inputs, role: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = call(model, x)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        what = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"inputs of shapes {shapes(x)}"
        raise ModelError(f"{role}: fails on an input of {what}: {msg}") from None
    n = count(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{role}: must return logits of shape [batch, classes], got {shape} for a batch of {n}")
    return out


def check_outputs(model: nn.Module, example: Inputs, num_classes: int, role: str) -> None:
    """Check the model returns one finite logit per class, at batch 1, the example's batch and one more."""
    # Batch 1 through a train-mode BatchNorm1d fails for a reason the build never meets; export
    # programs refuse train()/eval() and are run as they are.
    was_training = model.training and not isinstance(model, torch.fx.GraphModule)
    if was_training:
        model.eval()
    try:
        n = count(example)
        for size in sorted({1, n, n + 1}):
            x = rows(example, torch.arange(size) % n)
            out = _run_once(model, x, role)
            if out.shape[1] != num_classes:
                raise ModelError(
                    f"{role}: returns {out.shape[1]} logits but the data has {num_classes} classes; "
                    "teacher and student must both output one logit per class"
                )
            if not torch.isfinite(out).all():
                raise ModelError(f"{role}: returns NaN or inf logits for a batch of {size} training inputs; "
                                 "check its weights and the input scaling (data.mean / data.std)")
    finally:
        if was_training:
            model.train()
