"""Text splits: JSON-lines documents tokenized with a local tokenizer file into token ids and a mask.

Each line of a split's file is ``{"text": "...", "label": 3}`` (keys from ``data.text``). Documents
are truncated and padded to ``max_length``; the model takes ``(input_ids, attention_mask)``, both
``[N, max_length]`` integers, named like that in every artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TextConfig
from ..errors import DataError
from ..inputs import InputSpec, token_inputs
from .checks import labels
from .splits import Split


def load_tokenizer(path: Path) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError("text data needs the tokenizers package: pip install tokenizers") from None
    if not path.is_file():
        raise DataError(f"data.text.tokenizer: file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{path}: not a tokenizers JSON file ({str(exc)[:160]})") from None


def _read_lines(path: Path, cfg: TextConfig) -> tuple[list[str], list[Any]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (kind text: one JSON object per line)")
    texts, ys = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts.append(str(row[cfg.text_key]))
                ys.append(row[cfg.label_key])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{n}: need a JSON object with '{cfg.text_key}' and '{cfg.label_key}' "
                                f"({type(exc).__name__}: {exc}); set data.text.text_key / label_key") from None
    return texts, ys


def pad_id(tokenizer: Any) -> int:
    for token in ("[PAD]", "<pad>", "<PAD>"):
        i = tokenizer.token_to_id(token)
        if i is not None:
            return int(i)
    return 0


def load_text(name: str, path: Path, cfg: TextConfig, tokenizer: Any) -> Split:
    texts, ys = _read_lines(path, cfg)
    if not texts:
        raise DataError(f"{path}: split '{name}' is empty; it needs at least one document")
    tokenizer.enable_truncation(max_length=cfg.max_length)
    tokenizer.enable_padding(length=cfg.max_length, pad_id=pad_id(tokenizer))
    enc = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=cfg.input_dtype)
    mask = np.array([e.attention_mask for e in enc], dtype=cfg.input_dtype)
    y = labels(str(path), name, np.asarray(ys), len(texts))
    return Split(name, (torch.from_numpy(ids), torch.from_numpy(mask)), torch.from_numpy(y))


def text_signature(cfg: TextConfig, tokenizer: Any) -> tuple[InputSpec, ...]:
    return token_inputs(cfg.max_length, int(tokenizer.get_vocab_size()), cfg.input_dtype)
