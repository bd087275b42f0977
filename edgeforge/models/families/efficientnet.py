"""EfficientNet-Lite-style students for small inputs.

EfficientNet-Lite (the TFLite/edge variant of Tan & Le 2019's EfficientNet) drops squeeze-excite
and swish for relu6, so every op has an int8 kernel on edge runtimes, and keeps the stem and the
last 1x1 conv fixed while scaling. Its blocks are MobileNetV2's inverted residuals with 3x3 and
5x5 depthwise kernels, so they are built from the ``mobilenet`` family's blocks. ``width`` is the
stem's channel count (32 in Lite0) and every block scales by ``width / 32``; ``depth`` is the number
of stages kept from Lite0's table (stages 2, 3, 4 and 6 halve the resolution).
"""

from __future__ import annotations

from torch import nn

from .mobilenet import Block, MobileNet, _select, make_divisible

# EfficientNet-Lite0 (B0's table): expansion, kernel, stride, out, repeats per stage.
_LITE0_TABLE = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
LITE0 = [Block(k, t, c, False, "relu6", s if i == 0 else 1, stage)
         for stage, (t, k, s, c, n) in enumerate(_LITE0_TABLE, 1) for i in range(n)]


def efficientnet_lite(in_channels: int, num_classes: int, width: int = 32, depth: int = 7, *, stem_stride: int = 2,
                      divisor: int = 8, max_blocks: int | None = None, last_channels: int = 1280,
                      dropout: float = 0.2) -> nn.Module:
    """EfficientNet-Lite-style (relu6, no squeeze-excite). ``width=32, depth=7`` is EfficientNet-Lite0.

    kwargs: ``stem_stride`` (use 1 to keep the resolution of small inputs), ``divisor``,
    ``max_blocks`` per stage, ``last_channels`` (1280 in every Lite model), ``dropout``.
    """
    blocks = _select(LITE0, "efficientnet_lite", depth, max_blocks)
    return MobileNet(in_channels, num_classes, blocks, stem=make_divisible(width, divisor), stem_stride=stem_stride,
                     act="relu6", mult=width / 32, divisor=divisor, last=last_channels, hidden=0, dropout=dropout)
