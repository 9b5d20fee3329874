"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD), to a floor.

:class:`LRSchedule` is a picklable callable giving the multiplier of the peak LR at an optimizer step, so it
plugs into ``torch.optim.lr_scheduler.LambdaLR`` and its state rides along in DeepSpeed checkpoints. A resumed run
whose command line asks for another schedule than its checkpoint's is refused unless told which one to follow
(:func:`resumed_schedule`, Megatron's rule).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from megamythos.errors import UserError

# What a resumed run does when its command line's schedule differs from its checkpoint's.
ON_RESUME = ("check", "checkpoint", "override")


@dataclass
class LRSchedule:
    """Peak ``lr`` after ``warmup`` steps, decaying to ``min_lr`` at ``total`` steps.

    ``kind="cosine"``: half-cosine from the end of warmup to ``total``.
    ``kind="wsd"``: constant until the last ``decay_fraction`` of the run, then linear to ``min_lr``.
    """

    lr: float
    min_lr: float
    warmup: int
    total: int
    kind: str = "cosine"
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "wsd"):
            raise ValueError(f"unknown LR schedule {self.kind!r}; choose cosine or wsd")
        if not 0 <= self.min_lr <= self.lr:  # lr 0 (Megatron's too): every step at LR 0
            raise ValueError(f"need 0 <= min_lr <= lr, got lr={self.lr} min_lr={self.min_lr}")
        if self.total < 1 or self.warmup < 0:
            raise ValueError(f"need total >= 1 and warmup >= 0, got total={self.total} warmup={self.warmup}")

    def learning_rate(self, step: int) -> float:
        """LR used by optimizer step ``step`` (0-based): warmup reaches the peak at step ``warmup - 1``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            progress = min((step - self.warmup) / span, 1.0)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))
        decay_steps = max(round(self.decay_fraction * self.total), 1)
        decay_start = max(self.total - decay_steps, self.warmup)
        if step < decay_start:
            return self.lr
        progress = min((step - decay_start) / max(self.total - decay_start, 1), 1.0)
        return self.lr - (self.lr - self.min_lr) * progress

    def __call__(self, step: int) -> float:
        """Multiplier of the peak LR, as ``LambdaLR`` wants it (0 where the peak is 0)."""
        return self.learning_rate(step) / self.lr if self.lr else 0.0

    @property
    def warms_up_whole_run(self) -> bool:
        """Whether warmup lasts the whole run (``warmup >= total``): the LR rises to its last step, never decaying."""
        return self.warmup >= self.total

    def warmup_warning(self) -> str | None:
        """What a warmup of at least ``total`` steps does to the run, or None when warmup ends before it: the LR
        rises for the whole run, to ``lr · total / warmup`` at its last step (the peak only when warmup == total),
        and never decays to ``min_lr``."""
        if not self.warms_up_whole_run:
            return None
        last = self.learning_rate(self.total - 1)
        reached = (f"reaching --lr {self.lr:g} only at its last step" if self.warmup == self.total
                   else f"to {last:g} at its last step, never to --lr {self.lr:g}")
        return (f"--warmup {self.warmup} is not below the run's {self.total} steps: the LR rises for the whole run "
                f"({reached}) and never decays to --min-lr {self.min_lr:g}")


def build_scheduler(schedule: LRSchedule) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """A ``deepspeed.initialize(lr_scheduler=...)`` callable: the optimizer only exists after initialisation."""
    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return make


# Each schedule field and how a change of it is named: its flag, or "steps" (set by --train-iters/--train-tokens).
SCHEDULE_FLAGS = {"lr": "--lr", "min_lr": "--min-lr", "warmup": "--warmup", "total": "steps", "kind": "--lr-schedule",
                  "decay_fraction": "--wsd-decay-fraction"}


class ScheduleChangeError(UserError, ValueError):
    """A resumed run's command line asks for another LR schedule than its checkpoint's, without saying which
    one to follow."""


def schedule_changes(saved: LRSchedule, wanted: LRSchedule) -> list[str]:
    """``--flag saved -> wanted`` for each field that differs (the WSD decay share only where it applies)."""
    changes = []
    for field, flag in SCHEDULE_FLAGS.items():
        if field == "decay_fraction" and "wsd" not in (saved.kind, wanted.kind):
            continue
        before, after = getattr(saved, field), getattr(wanted, field)
        if before != after:
            changes.append(f"{flag} {before} -> {after}" if isinstance(before, str) else
                           f"{flag} {before:g} -> {after:g}")
    return changes


def resumed_schedule(saved: dict[str, Any] | None, wanted: LRSchedule, on_resume: str, where: str,
                     iteration: int) -> LRSchedule:
    """The schedule a run resumed at ``iteration`` from ``where`` follows: the checkpoint's ``saved`` one (None:
    saved before checkpoints recorded it) and the command line's ``wanted`` one agree, or ``on_resume`` says which
    wins ("checkpoint" or "override"); "check" refuses a difference in one line naming it, both choices and the
    LR each gives at ``iteration``."""
    if saved is None:
        return wanted
    kept = LRSchedule(**saved)
    changes = schedule_changes(kept, wanted)
    if not changes or on_resume == "checkpoint":
        return kept
    if on_resume == "override":
        return wanted
    raise ScheduleChangeError(
        f"the command line changes the LR schedule saved in {where} ({', '.join(changes)}): pass "
        f"--use-checkpoint-lr-schedule to keep the saved one (LR {kept.learning_rate(iteration):.4g} at step "
        f"{iteration + 1}), or --override-lr-schedule to follow the new one from here (LR "
        f"{wanted.learning_rate(iteration):.4g})")


def set_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, schedule: LRSchedule) -> None:
    """Make ``scheduler`` follow ``schedule`` (its peak LR the base of every parameter group); the caller then
    puts it at its step (:func:`resume_schedule`)."""
    for fn in scheduler.lr_lambdas:
        fn.__dict__.update(dataclasses.asdict(schedule))
    scheduler.base_lrs = [schedule.lr] * len(scheduler.base_lrs)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = schedule.lr


def resume_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, iteration: int) -> None:
    """Put a freshly built scheduler where it is after ``iteration`` optimizer steps (its LR is a function of the
    step alone), setting the LR of every parameter group of the new layout."""
    scheduler.last_epoch = iteration - 1
    with warnings.catch_warnings():  # "step() before optimizer.step()": the optimizer did step, in the old run
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
