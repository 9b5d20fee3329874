"""Stop and skip conditions that every rank must agree on: termination signals, the end of the process that
launched the rank, a wall-clock limit, and non-finite losses; and how a rank reports a peer that died (nothing to
agree on then).

Each is decided by one all-reduce of a flag over all ranks, so a signal delivered to a single rank, or a NaN
on one data-parallel shard, makes every rank take the same branch; a rank that diverged would otherwise hang in
the next collective.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import psutil
import torch
import torch.distributed as dist

from megamythos.errors import UserError
from megamythos.runtime.device import collective_device, local_world_size

logger = logging.getLogger(__name__)


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (a collective when torch.distributed is initialised)."""
    t = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# Command-line fragments of the processes that start ranks: DeepSpeed's runner and per-node launch.py,
# torchrun, and `bash launchers/pretrain.sh` (whose Python part supervises the deepspeed runner).
LAUNCHER_MARKERS = ("bin/deepspeed", "deepspeed.launcher.runner", "deepspeed/launcher/runner.py",
                    "deepspeed.launcher.launch", "deepspeed/launcher/launch.py", "bin/torchrun",
                    "torch.distributed.run", "launchers/pretrain.sh")


SUPERVISOR_GROUP_ENV = "MEGAMYTHOS_SUPERVISOR_PGID"  # set for the ranks by megamythos.training.launch.supervise


def join_supervisor_group() -> None:
    """Called first by every rank: move into the process group of ``bash launchers/pretrain.sh``'s supervisor
    (named by ``SUPERVISOR_GROUP_ENV``; absent when started otherwise, or on another node, where nothing changes),
    so that a signal to that group reaches the ranks but not DeepSpeed's runner and ``launch.py``, which run in a
    group of their own (see :mod:`megamythos.training.launch`)."""
    group = os.environ.get(SUPERVISOR_GROUP_ENV)
    if group:
        try:
            os.setpgid(0, int(group))
        except OSError as err:  # the supervisor's group is gone (it was killed) or lives in another session
            logger.warning("could not join the launcher's process group %s (%s): a signal to that group reaches "
                           "this rank only through the launcher", group, err)


def launcher_ancestors() -> list[psutil.Process]:
    """The ancestors of this process whose command line is a launcher's (LAUNCHER_MARKERS).

    Other ancestors (the user's shell, nohup, srun's step daemon) are left out: their end must not stop a run.
    """
    found = []
    for parent in psutil.Process().parents():
        try:
            cmdline = " ".join(parent.cmdline())
        except psutil.Error:
            continue
        if any(marker in cmdline for marker in LAUNCHER_MARKERS):
            found.append(parent)
    return found


def ended(process: psutil.Process) -> bool:
    """Whether ``process`` has exited (a zombie not yet reaped by its parent counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class LauncherWatch:
    """Calls ``on_end(description)`` once, from a daemon thread, when a process that launched this rank ends.

    DeepSpeed 0.19.8's single-node runner has no signal handler: a SIGTERM to ``deepspeed`` alone ends it and
    leaves launch.py and the ranks running, and a ``kill -9`` of any launcher orphans the ranks. Watching the
    launchers turns both into the same stop as a SIGTERM to the rank: every rank saves once and exits 0.
    """

    def __init__(self, on_end: Callable[[str], None], interval: float = 1.0) -> None:
        self.watched = launcher_ancestors()
        self._on_end = on_end
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="launcher-watch", daemon=True)
        if self.watched:
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            gone = next((p for p in self.watched if ended(p)), None)
            if gone is not None:
                self._on_end(f"launcher process {gone.pid} ended")
                return

    def stop(self) -> None:
        """End the polling thread and wait for it, so that no thread of ours is left at interpreter exit."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self._interval)


def seconds_since_start() -> float:
    """Wall-clock seconds since this process started."""
    return time.time() - psutil.Process().create_time()


class GracefulExit:
    """Records SIGTERM/SIGINT/SIGHUP (a closed terminal or ssh session), SIGUSR1 (the warning a batch scheduler
    sends before a time limit or preemption, e.g. SLURM's ``--signal=USR1@120``; its default action ends the
    process), the end of a launcher of this rank (:class:`LauncherWatch`), or the passing of
    ``exit_duration_in_mins`` since the process started, instead of dying, so the loop can save a checkpoint and
    exit 0.

    The duration counts from the process start, as Megatron's ``--exit-duration-in-mins`` does, so start-up,
    compilation and validations count against a job's time limit; 0 is no limit. ``then`` is what the log line of
    the first stop request says follows it: a checkpoint while the run trains, something else once the caller has
    nothing left to save (:meth:`megamythos.training.pretrain.Trainer.evaluate_at_end` sets it)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    WHILE_TRAINING = "will save a checkpoint and exit after this iteration"

    def __init__(self, exit_duration_in_mins: float = 0.0) -> None:
        self.reason: str | None = None
        self.then = self.WHILE_TRAINING
        self.exit_duration_in_mins = exit_duration_in_mins
        self._deadline = time.monotonic() + exit_duration_in_mins * 60 - seconds_since_start() \
            if exit_duration_in_mins else None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        self._watch = LauncherWatch(self._stop_for)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Record the signal; after a first SIGINT (Ctrl-C) the next one takes its default action and ends the
        process at once, without a checkpoint: the way out of a save or a collective that does not end."""
        self._stop_for(f"received {signal.Signals(signum).name}")
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            logger.warning("Ctrl-C again ends this process at once, without a checkpoint")

    def _stop_for(self, reason: str) -> None:
        if self.reason is None:
            logger.warning("%s: %s", reason, self.then)
            self.reason = reason

    def should_exit(self) -> bool:
        """Collective: true on every rank once any rank received a signal, lost its launcher or passed the
        duration limit (each rank reads its own clock; the first one past it decides for all)."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._stop_for(f"--exit-duration-in-mins {self.exit_duration_in_mins:g} reached "
                           f"({seconds_since_start() / 60:.2f} minutes since this process started)")
        return any_rank(self.reason is not None)

    def restore(self) -> None:
        self._watch.stop()
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced too many consecutive non-finite losses to continue."""


class NonFiniteGuard:
    """Counts what NaN/inf costs and aborts after ``max_consecutive`` non-finite losses or gradients in a row.

    Two kinds, counted apart: a loss that is non-finite on any rank costs its micro-batch (the caller skips backward,
    the next micro-batch takes its place and the step is still taken): ``skipped_micro_batches``; a step DeepSpeed
    itself discarded because the gradient norm was non-finite (ZeRO's overflow check, reported by the engine) costs
    the optimizer step: ``skipped_steps``, Megatron's "skipped iterations".
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_steps = 0
        self.skipped_micro_batches = 0

    def record(self, bad: bool, iteration: int) -> bool:
        """Count one completed optimizer step (``bad``: discarded for its non-finite gradient; must agree on all
        ranks); a good one ends the streak. Returns ``bad``; raises after too many bad ones in a row."""
        if not bad:
            self.consecutive = 0
            return False
        self.skipped_steps += 1
        self._lost(iteration, "gradient, step skipped")
        return True

    def skip(self, loss: torch.Tensor, iteration: int) -> bool:
        """Collective: True (on all ranks) when ``loss`` is non-finite on any rank: its micro-batch gets no
        backward, and the step reads the next micro-batch in its place. A finite loss says nothing yet about the
        step (its gradient may still overflow): no reset here."""
        if not any_rank(not bool(torch.isfinite(loss.detach()).all())):
            return False
        self.skipped_micro_batches += 1
        self._lost(iteration, "loss, micro-batch skipped, the next takes its place")
        return True

    def _lost(self, iteration: int, what: str) -> None:
        """One more non-finite loss or gradient in the streak: log it, abort after ``max_consecutive``."""
        self.consecutive += 1
        logger.warning("iteration %d: non-finite %s (%d in a row, %d in total)", iteration, what, self.consecutive,
                       self.skipped_steps + self.skipped_micro_batches)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss or gradient (last at iteration "
                f"{iteration}); training diverged. Lower --lr, raise --warmup, or resume from an earlier checkpoint.")


# What gloo (and NCCL's socket transport) raise in a collective whose peer process is gone.
PEER_LOSS_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank's process ended."""
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in PEER_LOSS_MARKERS)


def dead_local_ranks() -> list[int]:
    """Global ranks of this node whose processes are gone: the launcher's children that run a rank (they carry
    ``RANK`` in their environment) are the living ones; ranks are numbered node by node."""
    local = local_world_size()
    first = int(os.environ.get("RANK", "0")) - int(os.environ.get("LOCAL_RANK", "0"))
    alive = set()
    parent = psutil.Process().parent()
    for child in parent.children() if parent else []:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "RANK" in (env := child.environ()):
                alive.add(int(env["RANK"]))
        except (psutil.Error, ValueError):
            continue
    return sorted(set(range(first, first + local)) - alive)


# What gloo raises in a collective that waited --distributed-timeout-minutes for a peer that did not answer.
TIMEOUT_MARKERS = ("Timed out waiting",)
# What the rendezvous store raises when a process group being made waited as long for a rank that never joined it.
JOIN_TIMEOUT_MARKERS = ("wait timeout after",)


def collective_failure(err: BaseException, save: str | None, latest: str | None,
                       timeout_minutes: float) -> str | None:
    """The one line a rank prints when a collective failed because another rank ended, or stopped answering for
    ``timeout_minutes`` (stuck, stopped, or far slower than the others), or a process group being made waited as
    long for a rank that never came; None for any other error."""
    if not isinstance(err, RuntimeError):
        return None
    if lost_peer(err):
        dead = dead_local_ranks()
        who = ", ".join(f"rank {r}" for r in dead) if dead else "a rank of this job (on another node)"
        what = f"{who} ended during a collective"
    elif any(marker in str(err) for marker in TIMEOUT_MARKERS):
        what = (f"a collective waited {timeout_minutes:g} minutes (--distributed-timeout-minutes) for another rank, "
                "which is stuck or far slower than this one")
    elif any(marker in str(err) for marker in JOIN_TIMEOUT_MARKERS):
        what = (f"a process group waited {timeout_minutes:g} minutes (--distributed-timeout-minutes) for a rank that "
                "did not join it: it ended during start-up (its error is in its node's output) or is stuck")
    else:
        return None
    where = (f"--load {save} resumes from {latest}" if latest
             else "no checkpoint was saved yet: it starts afresh" if save else "it ran without --save")
    return (f"rank {os.environ.get('RANK', '0')}: {what}; the job cannot continue. Run the same command again "
            f"({where})")
