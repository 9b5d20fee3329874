"""Copies of the weights on several ranks compared (found 2026-12-07: a device's silent data corruption made one
replica differ and the run trained on and saved; Megatron-LM compares them with
--check-weight-hash-across-dp-replicas-interval)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megamythos.model.lm import MythosLM
from megamythos.training import replicas
from megamythos.training.replicas import (
    Mismatch,
    ReplicaMismatchError,
    check_replicas,
    held_copies,
    mismatches,
    restart_advice,
)
from tests.helpers import small_config

ALL = ("all", 0)


def test_the_odd_copies_are_those_off_the_majority_and_every_one_without_a_majority() -> None:
    same = {ALL: "a", ("ep", 0): "e0"}
    assert mismatches([same, same, same]) == []
    assert mismatches([same, {ALL: "b", ("ep", 0): "e0"}, same]) == [Mismatch(ALL, [1], 3)]
    assert mismatches([{ALL: "a"}, {ALL: "b"}]) == [Mismatch(ALL, [0, 1], 2)]
    ranks = [{ALL: "a", ("ep", r % 2): f"e{r % 2}"} for r in range(4)]  # two expert-parallel groups of 2 copies
    ranks[3] = {ALL: "a", ("ep", 1): "x"}
    assert mismatches(ranks) == [Mismatch(("ep", 1), [1, 3], 2)]
    assert Mismatch(ALL, [2], 4).describe(["h0", "h1", "h2", "h3"]) == "rank 2 (h2) differs from the other 3 copies"


def test_before_the_first_save_the_line_says_to_start_again_not_to_resume_none() -> None:
    """Found 2026-12-07 (review): a mismatch before any save said "latest checkpoint: none; resume from it"."""
    assert restart_advice(None) == "no checkpoint was saved yet: start the run again without that host"
    assert restart_advice("runs/x/iter_0000006") == ("latest checkpoint: runs/x/iter_0000006; resume from it without "
                                                    "that host")


def test_the_routing_counts_are_no_replicas_and_the_expert_bias_is() -> None:
    model = MythosLM(small_config())
    names = {name for name, _ in held_copies(model)}
    assert any(name.endswith("e_score_correction_bias") for name in names)
    assert not any(name.endswith("tokens_per_expert") for name in names)
    assert set(dict(model.named_parameters())) <= names  # without ZeRO-3 every rank holds every weight


def join(rank: int, world: int, out: str) -> None:
    """Join a gloo group of ``world`` processes through a file in ``out`` (no port another test could take)."""
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)


def _rank(rank: int, world: int, corrupt: int | None, out: str) -> None:
    join(rank, world, out)
    torch.manual_seed(0)
    model = MythosLM(small_config())
    if rank == corrupt:  # one flipped bit in one weight: what a device's silent data corruption leaves
        with torch.no_grad():
            w = model.recurrent.block.attn.wkv_a.weight
            bits = w.view(torch.int32)
            bits[3, 5] ^= 1 << 20
    try:
        check_replicas(model, 7, [f"host{r}" for r in range(world)], "runs/x/iter_0000006")
        verdict = None
    except ReplicaMismatchError as err:
        verdict = str(err)
    Path(out, f"{rank}.json").write_text(json.dumps(verdict))
    dist.barrier()  # none tears gloo down while another is still in a collective (a SIGABRT seen once in 3 runs)
    dist.destroy_process_group()


@pytest.mark.parametrize("corrupt", [None, 2])
def test_a_flipped_bit_on_one_rank_stops_every_rank_naming_it(corrupt: int | None, tmp_path: Path) -> None:
    mp.spawn(_rank, args=(3, corrupt, str(tmp_path)), nprocs=3)
    verdicts = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)]
    if corrupt is None:
        assert verdicts == [None, None, None]
        return
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert verdicts[0] == ("iteration 7: the copies of the weights that ranks hold alike differ: rank 2 (host2) "
                           "differs from the other 2 copies, first in recurrent.block.attn.wkv_a.weight: silent data "
                           "corruption on a device (or a nondeterministic update); the run stops without saving; "
                           "latest checkpoint: runs/x/iter_0000006; resume from it without that host")


def _hashing_rank(rank: int, world: int, out: str) -> None:
    """A rank of an expert-parallel layout as wide as the world (``--ep`` = world size): the experts' weights are its
    own, held by no other rank. Records the names of the tensors it hashed."""
    join(rank, world, out)
    torch.manual_seed(rank)  # each rank's experts differ, as under expert parallelism
    model = MythosLM(small_config())
    names = {id(t): name for name, t in held_copies(model)}
    experts = {id(p) for name, p in model.named_parameters() if ".experts." in name}
    replicas.replica_key = lambda p: ("ep", rank) if id(p) in experts else ALL
    hashed, digest = [], replicas.tensor_digest

    def recorded(t: torch.Tensor) -> str:
        hashed.append(names[id(t)])
        return digest(t)

    replicas.tensor_digest = recorded
    torch.manual_seed(0)
    with torch.no_grad():  # the replicated weights alike on every rank
        for p in model.parameters():
            if id(p) not in experts:
                p.copy_(torch.randn_like(p))
    check_replicas(model, 3, [f"host{r}" for r in range(world)], "none")
    Path(out, f"{rank}.json").write_text(json.dumps(hashed))
    dist.barrier()
    dist.destroy_process_group()


def test_a_tensor_no_other_rank_holds_is_not_hashed(tmp_path: Path) -> None:
    """Found 2026-12-07 (review): with --ep as wide as the world every rank hashed its own experts' weights, most of
    an MoE's bytes, on the host, before every save, though no other rank held a copy to compare them with."""
    mp.spawn(_hashing_rank, args=(2, str(tmp_path)), nprocs=2)
    for rank in range(2):
        hashed = json.loads((tmp_path / f"{rank}.json").read_text())
        assert not [name for name in hashed if ".experts." in name], hashed
        assert "recurrent.block.attn.wkv_a.weight" in hashed and any("e_score_correction_bias" in n for n in hashed)
