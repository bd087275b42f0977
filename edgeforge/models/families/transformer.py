"""A small transformer encoder student for token classification of whole sequences.

token embedding + learned positions -> ``depth`` pre-LN encoder layers (multi-head self-attention,
GELU feed-forward) -> final layer norm -> mean over the tokens the attention mask keeps -> linear
head. ``forward(input_ids, attention_mask)``; the inputs it takes are ``token_inputs(max_len,
vocab_size)`` from ``edgeforge.inputs``.

Written for export: no data-dependent control flow, the mask enters arithmetically (an additive
bias on the attention logits of padding keys, a multiply before pooling), attention is spelled out in
linear/matmul/softmax so every format lowers the same ops and the int8 quantizer annotates each
one (linear, matmul, softmax, GELU, layer norm, embedding: ``quant/op_families.py``).

``project_embedding`` initialises the student's table from a teacher's (e.g. MiniLM's 384-wide
one) by truncated SVD to the student's width, when both share the tokenizer.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import ConfigError

# Added to the attention logits of padding keys. exp(-16) ~ 1e-7 of a kept key's weight, while the
# softmax input keeps an int8 scale of ~0.1: the usual -1e4 (or -inf) would stretch that one int8
# range over 10^4 and round every real attention logit to the same level.
MASK_BIAS = -16.0


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.head_dim)) + bias
        mixed = torch.matmul(F.softmax(scores, dim=-1), v)
        return self.out(mixed.transpose(1, 2).reshape(b, n, w))


class AttentionBias(nn.Module):
    """[B, L] mask (1 = token, 0 = padding, any int dtype) -> [B, 1, 1, L] additive bias on attention logits."""

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return ((mask - 1.0) * -MASK_BIAS).reshape(mask.shape[0], 1, 1, mask.shape[1])


class MaskedMean(nn.Module):
    """Mean over the kept tokens: sum of x * mask / number kept (an all-padding row gives zeros)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class EncoderLayer(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class TransformerClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, *, max_len: int = 128, width: int = 128, depth: int = 2,
                 heads: int = 4, ffn: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        _check(vocab_size, max_len, width, depth, heads)
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(width, heads, ffn or 4 * width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.attention_bias, self.pool = AttentionBias(), MaskedMean()
        self.classifier = nn.Linear(width, num_classes)
        self.max_len = max_len

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        mask = attention_mask.to(torch.float32)
        # The whole table when the sequence is max_len: a no-op slice exports as an alias, which
        # coremltools 9.0 cannot convert ("Unsupported fx node alias"). Shapes are static at export.
        position = self.position if n == self.max_len else self.position[:, :n]
        x = self.embed(input_ids) + position
        bias = self.attention_bias(mask)
        for layer in self.layers:
            x = layer(x, bias)
        return self.classifier(self.pool(self.norm(x), mask))


def _check(vocab_size: int, max_len: int, width: int, depth: int, heads: int) -> None:
    if vocab_size < 2 or max_len < 1 or depth < 1:
        raise ConfigError(f"student: transformer needs vocab_size >= 2, max_len >= 1, depth >= 1 (got {vocab_size}, "
                          f"{max_len}, {depth})", key="student", fix="fix student.kwargs")
    if heads < 1 or width % heads:
        raise ConfigError(f"student.width: {width} is not divisible by heads {heads}", key="student.kwargs.heads",
                          fix="pick heads dividing the width (e.g. width 128, heads 4)")


def transformer(in_channels: int, num_classes: int, width: int = 128, depth: int = 2, *, vocab_size: int,
                max_len: int = 128, heads: int = 4, ffn: int | None = None, dropout: float = 0.1) -> nn.Module:
    """The registered builder (``student.family: transformer``). ``in_channels`` is unused (token inputs).

    kwargs: ``vocab_size`` (the tokenizer's), ``max_len`` (sequence length), ``heads``, ``ffn``
    (default 4 x width), ``dropout``.
    """
    del in_channels
    return TransformerClassifier(vocab_size, num_classes, max_len=max_len, width=width, depth=depth, heads=heads,
                                 ffn=ffn, dropout=dropout)


def project_embedding(teacher_weight: torch.Tensor, width: int) -> torch.Tensor:
    """The teacher's embedding table [V, D] projected to ``width`` columns: onto its ``width`` principal
    directions (truncated SVD of the centred table, i.e. PCA).

    Rows keep their relative geometry as well as a rank-``width`` map can; the result is rescaled to
    the teacher table's per-entry standard deviation, so it starts at the scale the student's
    layer norms expect.
    """
    w = teacher_weight.detach().to(torch.float32)
    if w.ndim != 2 or width < 1 or width > min(w.shape):
        raise ConfigError(f"student: cannot project a teacher table of shape {list(w.shape)} to width {width}",
                          key="student.width", fix=f"use a width between 1 and {min(w.shape) if w.ndim == 2 else '?'}")
    centred = w - w.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projected = w @ vh[:width].T
    return projected * (w.std() / projected.std().clamp(min=1e-12))


def init_from_teacher(model: TransformerClassifier, teacher_weight: torch.Tensor) -> None:
    """Copy ``project_embedding(teacher_weight)`` into the student's table (vocabularies must match)."""
    table = model.embed.weight
    if teacher_weight.shape[0] != table.shape[0]:
        raise ConfigError(f"student: teacher vocabulary {teacher_weight.shape[0]} != student vocab_size "
                          f"{table.shape[0]}", key="student.kwargs.vocab_size", fix="use the teacher's tokenizer size")
    with torch.no_grad():
        table.copy_(project_embedding(teacher_weight, table.shape[1]))
