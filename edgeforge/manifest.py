"""The build manifest: everything needed to trust, reproduce and compare a build."""

from __future__ import annotations

import datetime as dt
import os
import platform
from typing import TYPE_CHECKING, Any

from .validate import sha256_file

if TYPE_CHECKING:
    from .config import LoadedConfig
    from .plan import Plan

SCHEMA = "edgeforge.manifest/1"


def make_manifest(*, lc: LoadedConfig, plan: Plan, versions: dict[str, str], stage_times: dict[str, float],
                  stages: dict[str, Any], models: dict[str, Any], targets: list[dict[str, Any]],
                  gate: dict[str, Any], exit_code: int) -> dict[str, Any]:
    cfg = lc.config
    data = plan.data
    return {
        "schema": SCHEMA,
        "name": cfg.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "versions": versions,
        "config": {"path": str(lc.path), "sha256": lc.digest(), "file_sha256": sha256_file(lc.path),
                   "resolved": cfg.model_dump(mode="json")},
        "data": {"sha256": data.digest(), "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                 "class_names": data.class_names,
                 "splits": {s.name: {"samples": len(s), "sha256": s.digest()} for s in (data.train, data.val, data.test)}},
        "seed": {"distill": cfg.distill.seed, "qat": cfg.qat.seed},
        "stage_seconds": stage_times,
        "stages": stages,
        "models": models,
        "targets": targets,
        "gate": gate,
        "exit_code": exit_code,
    }
