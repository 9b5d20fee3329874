"""Under a real torch.distributed (gloo) group: index caches (rank 0 builds, rank 1 maps) and the data check."""
from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

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


def _data_check_main(rank: int, init_file: str, cases: list[str], results) -> None:
    """Each case: this rank's --data-path is ``CASE/node{rank}/corpus`` (a node's own copy), checked as the trainer
    checks it (resolve_run_data, then check_same_data); records each case's one line of refusal, or None."""
    from datetime import timedelta

    import torch.distributed as dist

    from megamythos.errors import UserError
    from megamythos.training import pretrain
    from megamythos.training.arguments import parse_args

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    outcomes: list[str | None] = []
    try:
        for case in cases:
            try:
                _, data = pretrain.resolve_run_data(parse_args(["--data-path", f"{case}/node{rank}/corpus"]), 400, rank)
                pretrain.check_same_data(data, 2)
                outcomes.append(None)
            except UserError as err:
                outcomes.append(str(err))
        results[rank] = outcomes
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ranks_agree_on_equal_copies_and_name_the_rank_whose_copy_differs_or_fails(tmp_path) -> None:
    """Nodes reading their own copies of the data: equal copies under other paths train; a copy of other documents
    is refused on both ranks naming rank 1; a copy missing on rank 1's node stops rank 0 too, naming rank 1, its
    host and its reason. Found 2026-12-07 (review): rank 1 raised its own data check's error before the gather of
    what the ranks read, which rank 0 had entered: rank 0 waited in it for a rank that had ended (told only that a
    rank ended during a collective, or hung until the timeout under NCCL)."""
    import socket

    equal, other, missing = (str(tmp_path / name) for name in ("equal", "other", "missing"))
    for case in (equal, other, missing):
        make_dataset(Path(case) / "node0" / "corpus", 60)
    make_dataset(Path(equal) / "node1" / "corpus", 60)
    make_dataset(Path(other) / "node1" / "corpus", 60, seed=1)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_data_check_main, args=(r, str(tmp_path / "init"), [equal, other, missing],
                                                            results)) for r in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=180)
        assert [p.exitcode for p in procs] == [0, 0]
        outcomes = [results[0], results[1]]
    host = socket.gethostname()
    assert [outcome[0] for outcome in outcomes] == [None, None]
    assert outcomes[0][1] == outcomes[1][1]
    assert outcomes[0][1].startswith(f"rank 1 (host {host}) reads other data than rank 0 (host {host}) under the "
                                     f"same paths: {other}/node0/corpus: tokens ")
    assert outcomes[1][2].startswith(f"--data-path: dataset '{missing}/node1/corpus' not found")
    assert outcomes[0][2] == f"the data check failed on rank 1 (host {host}): {outcomes[1][2]}"
