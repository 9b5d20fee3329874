"""The per-step collective accounting (megamythos.training.comm_stats) on a real one-process gloo group."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megamythos.training import comm_stats
from tests.helpers import free_port


@pytest.fixture(scope="module")
def group():
    stats = comm_stats.install()  # before the group exists, as the trainer does
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield stats
    dist.destroy_process_group()


def test_counts_calls_and_full_tensor_bytes_of_each_kind(group):
    stats = group
    stats.reset()
    shard, full = torch.zeros(10), torch.zeros(10)
    dist.all_gather_into_tensor(full, shard)
    dist.distributed_c10d.all_gather_into_tensor(full, shard)  # DeepSpeed's coalesced path looks it up here
    dist.reduce_scatter_tensor(torch.zeros(10), torch.zeros(10, dtype=torch.float32))
    dist.all_reduce(torch.zeros(3, dtype=torch.float64))
    dist.all_to_all_single(torch.zeros(4), torch.zeros(4))
    s = stats.scalars()
    assert s["comm/all-gather-calls"] == 2 and s["comm/all-gather-bytes"] == 80
    assert s["comm/reduce-scatter-calls"] == 1 and s["comm/reduce-scatter-bytes"] == 40
    assert s["comm/all-reduce-calls"] == 1 and s["comm/all-reduce-bytes"] == 24
    assert s["comm/all-to-all-calls"] == 1 and s["comm/all-to-all-bytes"] == 16


def test_reset_starts_a_new_window_and_install_is_idempotent(group):
    stats = group
    dist.all_reduce(torch.zeros(1))
    stats.reset()
    assert all(v == 0 for v in stats.scalars().values())
    assert comm_stats.install() is stats
    dist.all_reduce(torch.zeros(2))
    assert stats.scalars()["comm/all-reduce-calls"] == 1  # wrapped once, counted once


def test_a_collective_implemented_by_another_counts_once(group):
    stats = group
    stats.reset()
    dist.distributed_c10d._all_gather_base(torch.zeros(6), torch.zeros(6))  # deprecated alias of the same op
    assert stats.scalars()["comm/all-gather-calls"] == 1
