"""Replicas that should hold the same weights, compared: silent data corruption shows as one that differs.

A device that computes a wrong bit now and then (silent data corruption) trains on without an error: the loss
stays finite and the run saves. Where several ranks hold copies of the same tensor, their bytes must stay equal
bit for bit, since every rank applies the same update to the same values (the reduced gradients are the same on
every rank). Megatron-LM compares them every ``--check-weight-hash-across-dp-replicas-interval`` steps; so does the
trainer, and before every checkpoint it saves, so that no save follows a step at which the copies parted.

Which ranks hold copies of a tensor (:func:`replica_key`): a replicated parameter, every rank; a tensor-parallel
shard, the ranks of the same tensor-parallel rank; an AutoEP expert's weights, the ranks of the same expert-parallel
rank. ZeRO-3's partitioned parameters are held by one rank each and are not compared; its persistent ones (the
recurrent core kept gathered, small tensors) are. The persistent buffers (the expert-selection bias) count as
replicated; the per-rank routing counts (summed across ranks once per step) do not.

A first all-gather of the replica keys each rank holds finds those that more than one rank holds (:func:`shared`):
a tensor no other rank holds a copy of (an expert's weights where ``--ep`` is the world size, a tensor-parallel
shard where ``--tp`` is) has nothing to be compared with and is not hashed; those are most of an MoE's weights.
Each rank then hashes the rest of what it holds (sha256 of each tensor's bytes, one digest per replica key), a
second all-gather compares the digests, and only where they differ a third one names the first tensor that does.
The verdict is computed from the same gathered values on every rank, so all of them stop alike.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from megamythos.errors import UserError
from megamythos.model.moe import expert_loads

REPLICATED = ("all", 0)


class ReplicaMismatchError(UserError, RuntimeError):
    """Copies of a tensor on several ranks hold different bytes (exit 2 with one line, like every user error)."""


def replica_key(p: torch.Tensor) -> tuple[str, int]:
    """Which ranks hold copies of ``p``: ``("all", 0)`` every rank; ``("tp", r)`` the ranks of tensor-parallel rank
    ``r`` (an AutoTP shard); ``("ep", r)`` those of expert-parallel rank ``r`` (an AutoEP expert's weights)."""
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.runtime.utils import is_model_parallel_parameter
    from deepspeed.utils import groups

    if isinstance(p, nn.Parameter) and is_moe_param(p):
        return "ep", groups._get_expert_parallel_rank(p.group_name)
    if isinstance(p, nn.Parameter) and is_model_parallel_parameter(p):
        return "tp", groups.get_tensor_model_parallel_rank()
    return REPLICATED


def held_copies(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of ``model`` this rank holds whole and other ranks hold copies of: its
    parameters but ZeRO-3's partitioned ones, and its persistent buffers but the per-rank routing counts."""
    counts = {id(load.tokens_per_expert) for load in expert_loads(model).values()}
    for name, p in model.named_parameters():
        if not hasattr(p, "ds_id") or getattr(p, "ds_persist", False):  # ZeRO-3 partitioned: one rank each
            yield name, p
    for prefix, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set and id(buffer) not in counts:
                yield f"{prefix}.{name}" if prefix else name, buffer


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of ``t``'s bytes (its dtype's, on the host)."""
    return hashlib.sha256(t.detach().cpu().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def by_key(model: nn.Module) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """{replica key: {tensor name: tensor}} of what this rank holds (:func:`held_copies`)."""
    out: dict[tuple[str, int], dict[str, torch.Tensor]] = defaultdict(dict)
    for name, t in held_copies(model):
        out[replica_key(t)][name] = t
    return out


def shared(gathered: list[list[tuple[str, int]]]) -> set[tuple[str, int]]:
    """The replica keys that more than one rank holds (``gathered[r]``: the keys rank ``r`` holds)."""
    holders = Counter(key for keys in gathered for key in set(keys))
    return {key for key, count in holders.items() if count > 1}


def combined(per_tensor: dict[str, str]) -> str:
    """One digest of a replica key's tensors (names and digests, in name order)."""
    return hashlib.sha256("".join(f"{n}:{d};" for n, d in sorted(per_tensor.items())).encode()).hexdigest()


@dataclass(frozen=True)
class Mismatch:
    """Ranks whose copies of one replica key's tensors differ from the others'."""

    key: tuple[str, int]
    odd: list[int]  # the ranks that differ from the most common copy; every holder where there is no majority
    holders: int  # the ranks that hold copies under this key

    def describe(self, hosts: list[str]) -> str:
        who = ", ".join(f"rank {r} ({hosts[r]})" for r in self.odd)
        if len(self.odd) == self.holders:
            return f"{who} hold {self.holders} different copies (no majority tells which is wrong)"
        return f"{who} differ{'s' * (len(self.odd) == 1)} from the other {self.holders - len(self.odd)} copies"


def mismatches(gathered: list[dict[tuple[str, int], str]]) -> list[Mismatch]:
    """The replica keys whose combined digests differ between the ranks that hold them (``gathered[r]``: rank
    ``r``'s {key: combined digest}), in key order. The odd ranks are those not holding the most common digest when
    one digest is held by more ranks than any other, else every holder."""
    digests_of: dict[tuple[str, int], dict[int, str]] = defaultdict(dict)  # key -> {rank: digest}
    for rank, keys in enumerate(gathered):
        for key, digest in keys.items():
            digests_of[key][rank] = digest
    out = []
    for key in sorted(digests_of):
        held = digests_of[key]
        ranked = Counter(held.values()).most_common()
        if len(ranked) == 1:
            continue
        majority = ranked[0][0] if ranked[0][1] > ranked[1][1] else None
        out.append(Mismatch(key, sorted(r for r, d in held.items() if d != majority), len(held)))
    return out


def first_differing(gathered: list[dict[str, str]], mismatch: Mismatch) -> str:
    """The first tensor name (in name order) whose digest on an odd rank of ``mismatch`` differs from another
    holder's, from every rank's {name: digest} of that key (``gathered[r]``, empty for a rank that holds none)."""
    odd = mismatch.odd[0]
    others = [g for r, g in enumerate(gathered) if g and r != odd]
    for name in sorted(gathered[odd]):
        if any(other.get(name) != gathered[odd][name] for other in others):
            return name
    return sorted(gathered[odd])[0]  # another set of names altogether


def all_gather(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def restart_advice(last_good: str | None) -> str:
    """Where the run goes on from once the odd host is left out: ``last_good``, the latest checkpoint, or the start
    where none was saved yet."""
    if last_good is None:
        return "no checkpoint was saved yet: start the run again without that host"
    return f"latest checkpoint: {last_good}; resume from it without that host"


def check_replicas(model: nn.Module, iteration: int, hosts: list[str], last_good: str | None) -> None:
    """Compare every replicated tensor of ``model`` across the ranks (collective: an all-gather of the replica keys
    held, one of a digest per key that several ranks hold, a third only on a mismatch). Raises
    :class:`ReplicaMismatchError` on every rank, naming the ranks and hosts whose copies differ, the first tensor that
    does, and ``last_good`` (the checkpoint to resume, None before the first save: :func:`restart_advice`)."""
    held = by_key(model)
    compared = shared(all_gather(sorted(held)))
    mine = {key: {name: tensor_digest(t) for name, t in tensors.items()}
            for key, tensors in held.items() if key in compared}
    found = mismatches(all_gather({key: combined(tensors) for key, tensors in mine.items()}))
    if not found:
        return
    first = found[0]
    tensor = first_differing(all_gather(mine.get(first.key, {})), first)
    more = f" (and {len(found) - 1} other group{'s' * (len(found) > 2)} of copies)" if len(found) > 1 else ""
    raise ReplicaMismatchError(
        f"iteration {iteration}: the copies of the weights that ranks hold alike differ: {first.describe(hosts)}, "
        f"first in {tensor}{more}: silent data corruption on a device (or a nondeterministic update); the run stops "
        f"without saving; {restart_advice(last_good)}")
