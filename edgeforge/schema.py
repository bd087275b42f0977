"""Typed-config plumbing shared by the build config and target profiles.

Models reject unknown keys; a validation failure becomes one line naming the file, the key
path and what is allowed, e.g. ``edgeforge.yaml: distill.temprature: unknown key (allowed: ...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return sorted(fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def describe_error(cls: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(cls, loc)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{path}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{path}: {msg}{shown}"


def parse(cls: type[M], data: Any, source: str) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(cls, exc)}") from None


_MAX_VALUES = 100_000  # expanded scalars + containers; real configs hold a few hundred


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' at line {line} (first at line {seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, where: str, sizes: dict[int, int], open_: set[int]) -> int:
    """Count values as a consumer would see them, with aliases expanded, without expanding them."""
    if not isinstance(node, dict | list):
        return 1
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise ConfigError(f"{where}: a YAML alias refers to itself; write the value out")
    open_.add(id(node))
    items = node.items() if isinstance(node, dict) else enumerate(node)
    total = 1
    for k, v in items:
        total += _expanded_size(v, f"{where}.{k}" if where else str(k), sizes, open_)
        if total > _MAX_VALUES:
            raise ConfigError(f"{where or '(top level)'}: expands to more than {_MAX_VALUES:,} values "
                              "(nested YAML aliases?); write the value out")
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML: duplicate keys, self-referencing aliases and alias bombs are one-line errors."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    try:
        _expanded_size(data, "", {}, set())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    return data


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    return load_yaml_text(text, str(path))
