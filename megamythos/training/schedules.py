"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD), to a floor.

:class:`LRSchedule` is a picklable callable giving the multiplier of the peak LR at an optimizer step, so it
plugs into ``torch.optim.lr_scheduler.LambdaLR`` and its state rides along in DeepSpeed checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 < lr and 0 <= min_lr <= lr, got lr={self.lr} min_lr={self.min_lr}")
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
        """Multiplier of the peak LR, as ``LambdaLR`` wants it."""
        return self.learning_rate(step) / self.lr


def build_scheduler(schedule: LRSchedule):
    """A ``deepspeed.initialize(lr_scheduler=...)`` callable: the optimizer only exists after initialisation."""
    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return make
