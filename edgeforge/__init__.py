"""edgeforge: teacher -> distilled student -> int8 QAT -> per-target artifacts, validated and gated.

The Python API the CLI wraps::

    import edgeforge
    result = edgeforge.build("samples/digits/edgeforge.yaml")
    result.exit_code, result.manifest_path
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline import BuildResult


def build(config: Any, **kwargs: Any) -> BuildResult:
    """Run the whole pipeline for a config path (or a LoadedConfig); see pipeline.build."""
    from .pipeline import build as _build

    return _build(config, **kwargs)


def load_config(path: Any, overrides: dict[str, Any] | None = None) -> Any:
    from .config import load_config as _load

    return _load(path, overrides)


__all__ = ["__version__", "build", "load_config"]
