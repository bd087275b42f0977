"""Core ML: export to .mlpackage and check it with edgeforge's numpy reference interpreter.

Core ML cannot run on Linux, so the reference interpreter is what validates Core ML artifacts there:
these tests hold it to PyTorch (fp32 1e-4; fp16 within fp16 rounding) for every op family it has a
kernel for, to the QAT simulation for W8A8 programs, and check that an op without a kernel leaves the
artifact unvalidated instead of passing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeforge.carrier import Carrier
from edgeforge.errors import ExportError, RuntimeUnavailable
from edgeforge.exporters import get_exporter
from edgeforge.runtimes import get_runtime
from edgeforge.targets import TargetProfile, load_profile

pytest.importorskip("coremltools")
pytestmark = pytest.mark.coreml

ROOT = Path(__file__).resolve().parent.parent
FP16_TOL = 2e-2  # relative to the output's scale: a few fp16 ulps (2^-11) accumulated over a dozen ops


def carrier_for(model: nn.Module, input_shape: tuple[int, ...], quantized: torch.fx.GraphModule | None = None,
                num_classes: int = 10) -> Carrier:
    return Carrier(model.eval(), quantized, input_shape, num_classes, [f"c{i}" for i in range(num_classes)],
                   torch.zeros(4, *input_shape), name="tiny")


def target(precision: str, batch: int = 2, **coreml: object) -> TargetProfile:
    return TargetProfile(name=f"t-{precision}", format="coreml", precision=precision,  # type: ignore[arg-type]
                         input={"batch": batch}, coreml=coreml)


def export(tmp: Path, model: nn.Module, shape: tuple[int, ...], precision: str, quantized=None, **kw):  # type: ignore[no-untyped-def]
    t = target(precision, **kw)
    art = get_exporter("coreml").export(carrier_for(model, shape, quantized), t, tmp / f"{precision}.mlpackage")
    return art, get_runtime("coreml").open(art.path, t)


# ---- one tiny model per op family ------------------------------------------------------------------

class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=(1, 2))
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 5, padding="same", groups=8, bias=False)
        self.valid = nn.Conv2d(8, 6, (2, 3))
        self.c1d = nn.Conv1d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.valid(self.depthwise(self.dilated(self.strided(self.plain(x)))))
        return self.c1d(x.flatten(2))


class Linears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(2))  # N, 3, 16
        g = torch.matmul(h, h.transpose(1, 2))  # N, 3, 3
        return torch.cat([self.b(h).flatten(1), g.flatten(1) * 0.1], 1)


class Activations(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 3
        outs = [F.relu(x), F.relu6(x), torch.sigmoid(x), torch.tanh(x), F.silu(x), F.gelu(x),
                F.gelu(x, approximate="tanh"), F.leaky_relu(x, 0.1), F.elu(x), F.hardswish(x), F.hardsigmoid(x),
                F.softplus(x), torch.clamp(x, -1.0, 2.0), torch.exp(x * 0.3), torch.sqrt(x.abs() + 1)]
        return torch.cat(outs, 1).flatten(1).softmax(-1) * 100


class Pools(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.max_pool2d(x, 2), F.max_pool2d(x, 3, 2, padding=1), F.max_pool2d(x, 2, 2, ceil_mode=True),
                F.avg_pool2d(x, 2), F.avg_pool2d(x, 3, 2, padding=1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                F.avg_pool2d(x, 2, 2, ceil_mode=True), F.adaptive_avg_pool2d(x, 1)]
        return torch.cat([o.flatten(1) for o in outs] + [x.mean((2, 3)), x.amax(3).flatten(1), x.sum(2).flatten(1)], 1)


class Shapes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 3)  # N, HW, C
        b = a[:, 1:9:2, :].transpose(1, 2)  # N, C, 4
        c, d = torch.chunk(x, 2, dim=3)
        e = torch.cat([c, d * 2, c - d], 1)[:, :, 1:-1]
        f = (e.unsqueeze(1) / 3 + 1).squeeze(1)
        return torch.cat([b.flatten(1), f.flatten(1), torch.maximum(c, d).flatten(1)], 1)


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.ln = nn.LayerNorm(6)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.bn(x))  # BN before a conv stays a batch_norm op
        return self.ln(h.mean(2)).flatten(1)


FAMILIES = {"conv": (Convs, (3, 16, 16)), "linear_matmul": (Linears, (3, 4, 3)),
            "activations": (Activations, (2, 4, 4)), "pooling_reduce": (Pools, (3, 9, 9)),
            "shape_elementwise": (Shapes, (3, 6, 6)), "norms": (Norms, (3, 8, 8))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reference_interpreter_matches_pytorch(family: str, tmp_path: Path) -> None:
    cls, shape = FAMILIES[family]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    for precision in ("fp32", "fp16"):
        art, session = export(tmp_path, model, shape, precision)
        out = session.run(x.numpy())
        diff = float(np.abs(out - ref).max())
        print(f"{family} {precision}: max|diff| {diff:.2e} (scale {scale:.1f}) ops {art.info['ops']}")
        assert out.shape == ref.shape and out.dtype == np.float32
        assert diff <= (1e-4 * scale if precision == "fp32" else FP16_TOL * scale), (family, precision, diff)
