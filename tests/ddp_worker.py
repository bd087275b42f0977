"""Run by test_ddp.py under ``torchrun``: distil and QAT a tiny model data-parallel, then write this rank's
digests of the distilled student and of the QAT state (parameters and every buffer: BatchNorm
statistics, observer min/max, fake-quant scales) and of the carrier, one JSON file per rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from edgeforge.config import DistillConfig, QatConfig
from edgeforge.data import DataBundle, Split
from edgeforge.devices import Compute
from edgeforge.distill import distill
from edgeforge.distributed import join, leave, state_digest
from edgeforge.models.students import STUDENTS
from edgeforge.quant.qat import carrier_digest, quantization_aware_training
from edgeforge.training import TrainContext

from tiny_models import make_patterns, train_teacher


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ranks = join(Compute())
    splits = [Split(n, *(torch.from_numpy(a) for a in make_patterns(k, seed))) for n, k, seed in
              (("train", 256, 0), ("val", 96, 1), ("test", 64, 2))]
    data = DataBundle(*splits, num_classes=4, class_names=list("abcd"))
    teacher = train_teacher(data.train.x.numpy(), data.train.y.numpy(), epochs=3)
    torch.manual_seed(0)
    student = STUDENTS.get("convnet")(1, 4, width=8, depth=1)
    ctx = TrainContext(Compute(), ranks)
    d = distill(teacher, student, data, DistillConfig(epochs=2, batch_size=16, lr=0.01), augmented=False,
                show_progress=False, ctx=ctx)
    # observed (not learned) ranges: moving-average observers that only a MIN/MAX all-reduce keeps equal
    q = quantization_aware_training(d.student, teacher, data, data.train, QatConfig(epochs=2, batch_size=16,
                                    learn_ranges=False), temperature=3.0, alpha=0.7, show_progress=False, ctx=ctx)
    qat_state = torch.nn.Module()
    for i, (_name, t) in enumerate(sorted(q.result.best_state.items())):
        qat_state.register_buffer(f"b{i}", t.detach().clone())
    record = {"rank": ranks.rank, "world": ranks.world, "student": state_digest(d.student),
              "qat_state": state_digest(qat_state), "carrier": carrier_digest(q.converted),
              "buffers": sorted(q.result.best_state), "val_top1": q.result.best_val_top1,
              "history": [h.loss for h in d.result.history]}
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(record))
    leave(ranks)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
