"""Data: splits in memory or streamed from disk, the bundle a build trains and validates on."""

from .bundle import SPLITS, DataBundle, calibration_indices, calibration_split, load_data
from .checks import MAX_ABS_INPUT
from .splits import Split, SplitBase, StreamedSplit

__all__ = ["MAX_ABS_INPUT", "SPLITS", "DataBundle", "Split", "SplitBase", "StreamedSplit", "calibration_indices",
           "calibration_split", "load_data"]
