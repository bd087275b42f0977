"""Ranks.shard splits an epoch's order exactly as torch's DistributedSampler does (padding by wrapping)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from edgeforge.distributed import Ranks


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 3), (5, 4), (7, 1)])
def test_shard_matches_distributed_sampler(n: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = []
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        expected = order[list(sampler)]
        got = Ranks(rank=rank, world=world).shard(order)
        assert torch.equal(got, expected)
        shards.append(got)
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of batches: none waits
    assert set(torch.cat(shards).tolist()) == set(range(n))


def test_rows_split_and_single_process_is_identity() -> None:
    one = Ranks()
    x = torch.arange(7)
    assert one.shard(x) is x and one.split_rows(7) == slice(0, 7)
    assert [Ranks(rank=r, world=3).split_rows(7) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 7)]
