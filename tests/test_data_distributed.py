"""Index caches under a real torch.distributed (gloo) group: rank 0 builds, rank 1 only maps."""
from __future__ import annotations

import logging
import multiprocessing as mp

import numpy as np
import pytest

from tests.helpers import make_dataset


def _rank_main(rank: int, init_file: str, prefix: str, cache_dir: str, results) -> None:
    import torch.distributed as dist

    from megamythos.data.gpt_dataset import build_train_valid_test_datasets

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("megamythos.data.index_cache").addHandler(handler)
    logging.getLogger("megamythos.data.index_cache").setLevel(logging.INFO)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train, valid, _ = build_train_valid_test_datasets([prefix], "9,1,0", 8, 7, (300, 20, 0), cache_dir)
        results[rank] = (sum("building" in m for m in messages), np.asarray(train.shuffle_index).tolist(),
                         train[5]["tokens"].tolist(), len(valid))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_rank_zero_builds_and_other_ranks_map(tmp_path) -> None:
    prefix = make_dataset(tmp_path / "ds", 300)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "init"), prefix, str(tmp_path / "c"), results))
                 for r in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0]
        builds0, shuffle0, tokens0, valid0 = results[0]
        builds1, shuffle1, tokens1, valid1 = results[1]
    assert builds0 == 2 and builds1 == 0  # train and valid indices, built once, by rank 0
    assert shuffle0 == shuffle1 and tokens0 == tokens1 and valid0 == valid1
