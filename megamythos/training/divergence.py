"""The divergence guard: a finite loss that is far off stops the run, or rolls it back to its last good checkpoint.

Judged on the data-parallel mean ``lm loss`` of every optimizer step that was applied (a step the non-finite
guard discarded is that guard's business), two rules:

- **ceiling**: ``loss > divergence_factor x ln(vocab_size)``, a multiple of the loss of a uniform guess over the
  vocabulary; one step suffices.
- **spike**: ``loss > spike_factor x median(last spike_window good losses)`` for ``spike_patience`` steps in a
  row. Judged once ``spike_window`` good losses are recorded (a checkpoint keeps them for its resume); a spiking
  loss does not enter the window, and a good one ends the streak.

Both rules judge the loss all-reduced over the ranks (the same value on each), so every rank takes the same
branch without a collective of its own.

The loss of iteration ``t`` is that of the weights saved at iteration ``t - 1``. While a spike streak is open the
trainer writes no checkpoint (:attr:`DivergenceGuard.spiking`), and when the guard fires :func:`step_back` removes
the checkpoint written just before the first bad loss, so ``latest`` names weights whose next loss was judged good:
the checkpoint to stop at, or to roll back to.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from megamythos.checkpoint.checksums import ALONE, ChecksumError, Team, verify_checksums
from megamythos.checkpoint.files import LATEST, TAG_RE, move_tag_aside, read_latest, write_atomic
from megamythos.errors import UserError
from megamythos.training.checkpointing import team

logger = logging.getLogger(__name__)

ON_DIVERGENCE = ("stop", "rollback")


class DivergenceError(UserError, RuntimeError):
    """Training diverged to a finite loss past the guard's thresholds (exit code 2 like every user error)."""


@dataclass(frozen=True)
class Divergence:
    """The step at which the guard fired and why."""

    iteration: int
    loss: float
    threshold: float
    rule: str  # how the threshold was computed, naming its flag
    since: int  # first iteration of the streak (= ``iteration`` for the ceiling)

    def describe(self) -> str:
        streak = f" for {self.iteration - self.since + 1} steps in a row since iteration {self.since}" \
            if self.since != self.iteration else ""
        return f"iteration {self.iteration}: lm loss {self.loss:.6g} > {self.threshold:.6g} = {self.rule}{streak}"


class DivergenceGuard:
    """Watches the loss of each applied step; :meth:`observe` returns a :class:`Divergence` when a rule fires.

    ``divergence_factor`` or ``spike_factor`` 0 turns that rule off.
    """

    def __init__(self, vocab_size: int, divergence_factor: float, spike_factor: float, spike_window: int,
                 spike_patience: int) -> None:
        self.uniform_loss = math.log(vocab_size)
        self.divergence_factor = divergence_factor
        self.spike_factor = spike_factor
        self.spike_patience = spike_patience
        self.window: deque[float] = deque(maxlen=spike_window)
        self.streak = 0
        self.since = 0

    @property
    def ceiling(self) -> float:
        """The loss above which one step stops the run (inf when the rule is off)."""
        return self.divergence_factor * self.uniform_loss if self.divergence_factor else math.inf

    @property
    def spiking(self) -> bool:
        """True while a spike streak is open: no checkpoint may be written until it closes or fires."""
        return self.streak > 0

    def spike_threshold(self) -> float:
        """``spike_factor`` x the median of the window (inf until the window is full, or when the rule is off)."""
        if not self.spike_factor or len(self.window) < self.window.maxlen:
            return math.inf
        return self.spike_factor * statistics.median(self.window)

    def observe(self, loss: float, iteration: int) -> Divergence | None:
        """Judge the loss of the step that ended at ``iteration``. ``loss`` must be the all-reduced mean over the
        ranks, the same value on each: every rank then takes the same decision without another collective."""
        spike_threshold = self.spike_threshold()
        above, spike = loss > self.ceiling, loss > spike_threshold
        if above:
            return Divergence(iteration, loss, self.ceiling, f"{self.divergence_factor:g} x ln(vocab "
                              f"{round(math.exp(self.uniform_loss))}) (--divergence-factor)", iteration)
        if not spike:
            self.streak = 0
            self.window.append(loss)
            return None
        self.streak += 1
        self.since = iteration if self.streak == 1 else self.since
        logger.warning("iteration %d: lm loss %.6g above %.6g (%g x the median of the last %d good losses), spike "
                       "step %d of %d; no checkpoint until it ends", iteration, loss, spike_threshold,
                       self.spike_factor, len(self.window), self.streak, self.spike_patience)
        if self.streak < self.spike_patience:
            return None
        return Divergence(iteration, loss, spike_threshold, f"{self.spike_factor:g} x the median of the last "
                          f"{len(self.window)} good losses (--spike-factor, --spike-window)", self.since)

    def restart(self) -> None:
        """After a rollback: the streak is over; the window keeps the good losses from before it."""
        self.streak = 0

    def resume(self, window: list[float]) -> None:
        """A resumed run judges spikes against the good losses its checkpoint recorded (``window``, oldest first),
        not after ``spike_window`` new ones: a job chunked by its time limit would be blind to spikes that long
        after each launch."""
        self.window.extend(window)


def usable(tag_dir: Path, ranks: Team = ALONE) -> bool:
    """Whether a tag may be resumed: its checksums verify (a tag saved before checksums has none to check);
    collective over ``ranks``."""
    try:
        verify_checksums(tag_dir, ranks)
    except ChecksumError:
        return False
    return True


def step_back(save_dir: Path, first_bad: int, reloaded: int | None = None) -> Path | None:
    """Collective: make ``save_dir/latest`` name the newest complete checkpoint saved before iteration
    ``first_bad - 1`` whose checksums verify, and move the newer tags aside to ``TAG.diverged`` (kept for a post
    mortem, invisible to resume and export; their derived universal forms are deleted): the one saved at
    ``first_bad - 1`` holds the weights whose loss at ``first_bad`` was the first bad one. Candidates are verified
    newest first by every rank together (:func:`usable`), older ones only while newer ones fail; rank 0 lists the
    tags and changes the files (``latest`` first); every rank returns the tag directory ``latest`` then names, or
    None when no checkpoint is left (``latest`` is removed).

    ``reloaded``: the iteration of the tag a rollback has just reloaded, which stays: its weights gave good losses
    before the rollback, and a spike right after it comes from the samples read since (moving it aside too, a few
    such spikes in a row would empty the run's folder)."""
    ranks = team()
    latest, tags = ranks.share(lambda: (read_latest(save_dir), sorted(
        (int(m.group(1)), p.name) for p in (save_dir.iterdir() if save_dir.is_dir() else ())
        if p.is_dir() and (m := TAG_RE.match(p.name)))))
    newest = next((it for it, tag in tags if tag == latest), -1)  # newer tags are partial saves
    def blamed(it: int) -> bool:
        return it >= first_bad - 1 and it != reloaded

    candidates = [tag for it, tag in reversed(tags) if not blamed(it) and it <= newest]
    chosen = next((tag for tag in candidates if usable(save_dir / tag, ranks)), None)
    if ranks.rank == 0:
        if chosen != latest:
            if chosen:
                write_atomic(save_dir / LATEST, chosen)
            else:
                (save_dir / LATEST).unlink(missing_ok=True)
        for it, tag in tags:
            if blamed(it):
                aside = move_tag_aside(save_dir, tag, "diverged")
                logger.warning("moved checkpoint %s to %s: its weights gave the first diverging loss (iteration %d) "
                               "or came after it", save_dir / tag, aside.name, first_bad)
    if dist.is_initialized():
        dist.barrier()  # the files are changed before any rank reads them
    return save_dir / chosen if chosen else None
