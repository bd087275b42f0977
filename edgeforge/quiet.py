"""Keep the converters' chatter out of a build's output (EDGEFORGE_VERBOSE=1 keeps it).

torch, torchao, coremltools and LiteRT log version notices and deprecations on every import or
conversion that say nothing about the user's build; edgeforge's own lines and errors stay.
"""

from __future__ import annotations

import logging
import os
import warnings

_LOGGERS = ("torch", "torchao", "coremltools", "absl", "jax", "onnxscript", "litert_torch", "ai_edge_quantizer")


def quiet_third_party() -> None:
    if os.environ.get("EDGEFORGE_VERBOSE"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    import torch._logging

    torch._logging.set_logs(all=logging.ERROR)  # documented switch for torch's own per-module loggers
