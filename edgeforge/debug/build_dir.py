"""``edgeforge debug BUILD_DIR --target NAME``: the layer report of a finished build's target.

Reads what the build wrote: its manifest (the target's artifact), ``student_qat.pt2`` (the carrier,
loaded with the safe loader) and the config the manifest names (the target's profile and the test
split). The inputs are the first ``samples`` test inputs, or the ``x`` array of an .npz file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EdgeforgeError
from .report import LayerReport, Thresholds, layer_report


def _target_record(manifest: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    names = [t["name"] for t in manifest["targets"]]
    if name not in names:
        raise EdgeforgeError(f"{where}: no target {name!r} in this build (it has {', '.join(names) or 'none'})")
    rec = next(t for t in manifest["targets"] if t["name"] == name)
    if rec.get("precision") != "int8":
        raise EdgeforgeError(f"target {name} is {rec.get('precision')}; the layer report compares int8 artifacts")
    if not rec.get("artifact"):
        raise EdgeforgeError(f"target {name}: the build wrote no artifact ({rec.get('reason') or 'export failed'})")
    return rec


def _inputs(lc: Any, inputs: Path | None, samples: int) -> np.ndarray:
    if inputs is not None:
        try:
            x = np.load(inputs)["x"]
        except (OSError, KeyError, ValueError) as exc:
            raise EdgeforgeError(f"{inputs}: not an .npz file with an 'x' array ({type(exc).__name__})") from None
        x = x[:, None] if x.ndim == 3 else x
        return np.asarray(x[:samples], dtype=np.float32)
    from ..data import load_data

    x = load_data(lc).test.head(samples)
    if not isinstance(x, torch.Tensor):
        raise EdgeforgeError("the layer report compares models with one float input; this build's model takes "
                             f"{len(x)} inputs (token ids and a mask)")
    return x.numpy()


def debug_build(build_dir: str | Path, target: str, *, inputs: str | Path | None = None, samples: int = 32,
                config: str | Path | None = None, thresholds: Thresholds | None = None) -> LayerReport:
    """The layer report of ``target`` in the build at ``build_dir`` (see ``report`` for the divergence rule)."""
    from ..config import load_config
    from ..manifest_read import read_manifest
    from ..quant.qat import load_carrier
    from ..targets import resolve

    root = Path(build_dir)
    manifest = read_manifest(root, "build")
    rec = _target_record(manifest, target, root)
    artifact = root / rec["artifact"]["path"]
    carrier_file = root / "student_qat.pt2"
    for needed in (artifact, carrier_file):
        if not needed.exists():
            raise EdgeforgeError(f"{needed}: missing; rebuild the target with edgeforge build")
    cfg_path = Path(config) if config else Path(manifest["config"]["path"])
    if not cfg_path.is_file():
        raise EdgeforgeError(f"{cfg_path}: the build's config is gone; pass --config with its edgeforge.yaml")
    lc = load_config(cfg_path)
    profile = resolve([target], [lc.resolve(d) for d in lc.config.target_dirs])[0]
    x = _inputs(lc, Path(inputs) if inputs else None, samples)
    return layer_report(load_carrier(str(carrier_file)), artifact, profile, x, thresholds=thresholds)
