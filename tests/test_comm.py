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


def _waiting_rank(rank: int, init_file: str, results) -> None:
    """Rank 1 joins each collective 0.5 s late; rank 0 reports the seconds its stats count for a blocking
    all-reduce, for issuing an asynchronous one, and for waiting on that one's handle."""
    import time

    stats = comm_stats.install()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        seconds = []
        for blocking in (True, False):
            if rank == 1:
                time.sleep(0.5)
            stats.reset()
            handle = dist.all_reduce(torch.ones(4), async_op=not blocking)
            seconds.append(stats.seconds)
            if handle is not None:
                handle.wait()
                seconds.append(stats.seconds - seconds[-1])
        results[rank] = seconds
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_seconds_count_the_wait_for_a_late_rank_in_blocking_and_asynchronous_collectives(tmp_path):
    """What the trainer's step compute time leaves out: a rank that waits 0.5 s for a late one in a collective counts
    that wait, whether the collective blocks or its handle's ``wait()`` does (ZeRO-3's all-gathers)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_waiting_rank, args=(r, str(tmp_path / "init"), results)) for r in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0]
        blocking, issued, waited = results[0]
    assert blocking >= 0.4 and waited >= 0.4, (blocking, issued, waited)
    assert issued < 0.2, issued  # issuing returns at once: the wait is in the handle
