"""Stop and skip conditions that every rank must agree on: termination signals and non-finite losses.

Both are decided by one all-reduce of a flag over all ranks, so a signal delivered to a single rank, or a NaN
on one data-parallel shard, makes every rank take the same branch; a rank that diverged would otherwise hang in
the next collective.
"""
from __future__ import annotations

import logging
import signal
from types import FrameType

import torch
import torch.distributed as dist

from megamythos.errors import UserError

logger = logging.getLogger(__name__)


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (a collective when torch.distributed is initialised)."""
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class GracefulExit:
    """Records SIGTERM/SIGINT instead of dying, so the loop can save a checkpoint and exit 0."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            logger.warning("received %s: will save a checkpoint and exit after this iteration",
                           signal.Signals(signum).name)
        self.received = signum

    def should_exit(self) -> bool:
        """Collective: true on every rank once any rank received a signal."""
        return any_rank(self.received is not None)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced too many consecutive non-finite losses to continue."""


class NonFiniteGuard:
    """Counts steps lost to NaN/inf and aborts after ``max_consecutive`` in a row.

    Two kinds: a loss that is non-finite on any rank (the caller skips backward and step), and a step DeepSpeed
    itself discarded because the gradient norm was non-finite (ZeRO's overflow check, reported by the engine).
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def record(self, bad: bool, iteration: int, what: str) -> bool:
        """Count one completed optimizer step (``bad`` must agree on all ranks); a good one ends the streak.
        Returns ``bad``; raises after too many bad ones in a row."""
        if not bad:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped += 1
        logger.warning("iteration %d: non-finite %s, step skipped (%d in a row, %d in total)",
                       iteration, what, self.consecutive, self.skipped)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss or gradient (last at iteration "
                f"{iteration}); training diverged. Lower --lr, raise --warmup, or resume from an earlier checkpoint.")
        return True

    def skip(self, loss: torch.Tensor, iteration: int) -> bool:
        """Collective: True (on all ranks) when ``loss`` is non-finite on any rank and the step must be skipped.
        A finite loss says nothing yet about the step (its gradient may still overflow): no reset here."""
        bad = any_rank(not bool(torch.isfinite(loss.detach()).all()))
        return self.record(True, iteration, "loss") if bad else False
