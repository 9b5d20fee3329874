"""Per-step accounting of the collectives this process issues: calls and bytes of all-gather, reduce-scatter,
all-to-all and all-reduce.

Every collective DeepSpeed (ZeRO, AutoEP, AutoTP) and the trainer run ends in a ``torch.distributed`` function;
:func:`install` wraps those functions, in both namespaces they are looked up from (``torch.distributed`` and
``torch.distributed.distributed_c10d``, which DeepSpeed's coalesced all-gather calls), under their old and new
names (torch 2.13 renames ``all_gather_into_tensor`` to ``all_gather_single``), so the counts are exact.
Install before ``deepspeed.init_distributed()``: DeepSpeed keeps references to the all-gather and
reduce-scatter functions from then on.

Bytes are those of the full tensor the collective works on, as seen by this rank:

- all-gather: the gathered output (world x shard);
- reduce-scatter: the input that is reduced (world x shard);
- all-reduce: the tensor;
- all-to-all: the input this rank sends (its own slice included).

The traffic on a link follows from these (a ring moves (n - 1) / n of them per rank); see
:mod:`megamythos.planning.step_model`, which predicts the same quantities.

The wrappers also time the calls, and :func:`install` times ``Work.wait`` (the wait on the handle of a collective
issued with ``async_op=True``, as ZeRO-3's parameter all-gathers are): ``CommStats.seconds`` is the host time this
rank spent inside collectives, mostly waiting for the slower ranks to join (gloo blocks the caller; NCCL returns
at once and waits on the device, so on a GPU it holds little).
"""
from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

KINDS = ("all-gather", "reduce-scatter", "all-to-all", "all-reduce")


def _nbytes(t: torch.Tensor | Sequence[torch.Tensor]) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return sum(_nbytes(x) for x in t)


def _bytes_of(index: int, name: str) -> Callable[[tuple, dict], int]:
    """The bytes of a collective's tensor (or tensor list) argument, passed at position ``index`` or as ``name``."""
    return lambda args, kwargs: _nbytes(kwargs[name] if name in kwargs else args[index])


# function name -> (kind, bytes of the call from its (args, kwargs))
_COUNTED: dict[str, tuple[str, Callable[[tuple, dict], int]]] = {
    "all_gather_into_tensor": ("all-gather", _bytes_of(0, "output_tensor")),
    "_all_gather_base": ("all-gather", _bytes_of(0, "output_tensor")),
    "all_gather_single": ("all-gather", _bytes_of(0, "output_tensor")),
    "all_gather": ("all-gather", _bytes_of(0, "tensor_list")),
    "reduce_scatter_tensor": ("reduce-scatter", _bytes_of(1, "input")),
    "_reduce_scatter_base": ("reduce-scatter", _bytes_of(1, "input")),
    "reduce_scatter_single": ("reduce-scatter", _bytes_of(1, "input")),
    "reduce_scatter": ("reduce-scatter", _bytes_of(1, "input_list")),
    "all_reduce": ("all-reduce", _bytes_of(0, "tensor")),
    "all_reduce_coalesced": ("all-reduce", _bytes_of(0, "tensors")),
    "all_to_all_single": ("all-to-all", _bytes_of(1, "input")),
    "all_to_all": ("all-to-all", _bytes_of(1, "input_tensor_list")),
}


class CommStats:
    """Running totals of calls and bytes per collective kind since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.seconds = 0.0  # host seconds inside collectives and waits on their handles
        self.depth = 0  # > 0 inside a counted call: one collective implemented by another counts once

    def add(self, kind: str, nbytes: int) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += nbytes

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()
        self.seconds = 0.0

    def scalars(self) -> dict[str, float]:
        """``comm/<kind>-bytes`` and ``comm/<kind>-calls`` for every kind (zeros included)."""
        out: dict[str, float] = {}
        for kind in KINDS:
            out[f"comm/{kind}-bytes"] = float(self.bytes[kind])
            out[f"comm/{kind}-calls"] = float(self.calls[kind])
        return out


_STATS: CommStats | None = None


def _counting(fn: Callable, kind: str | None, size: Callable[[tuple, dict], int] | None,
              stats: CommStats) -> Callable:
    """``fn`` counted as one collective of ``kind`` (``None``: only timed, as ``Work.wait``) unless it runs inside
    another counted call."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = stats.depth == 0
        if outer and kind is not None and size is not None:
            stats.add(kind, size(args, kwargs))
        start = time.perf_counter()
        stats.depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            stats.depth -= 1
            if outer:
                stats.seconds += time.perf_counter() - start

    wrapper.__megamythos_counted__ = True  # type: ignore[attr-defined]
    return wrapper


def install() -> CommStats:
    """Wrap the ``torch.distributed`` collectives once per process; returns the process-wide counter."""
    global _STATS
    if _STATS is not None:
        return _STATS
    _STATS = CommStats()
    for name, (kind, size) in _COUNTED.items():
        original = getattr(distributed_c10d, name, None) or getattr(dist, name, None)
        if original is None or getattr(original, "__megamythos_counted__", False):
            continue
        wrapped = _counting(original, kind, size, _STATS)
        for namespace in (dist, distributed_c10d):
            if hasattr(namespace, name):
                setattr(namespace, name, wrapped)
    dist.Work.wait = _counting(dist.Work.wait, None, None, _STATS)
    return _STATS
