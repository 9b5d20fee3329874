"""Resumable pretraining batch sampler with Megatron's ``MegatronPretrainingSampler`` semantics."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class PretrainingSampler:
    """Yields, for this data-parallel rank, the index list of each micro-batch, in order from ``consumed_samples``.

    The global stream is ``consumed_samples, consumed_samples + 1, ..., total_samples - 1``, cut into groups of
    ``micro_batch_size * data_parallel_size``; rank ``r`` takes slice ``[r * mbs, (r + 1) * mbs)`` of each
    group and an incomplete final group is dropped. A run resumed with the consumed-sample count of a checkpoint
    therefore sees exactly the batches an uninterrupted run would have seen next.
    """

    total_samples: int
    consumed_samples: int
    micro_batch_size: int
    data_parallel_rank: int
    data_parallel_size: int

    def __post_init__(self) -> None:
        if self.total_samples <= 0:
            raise ValueError(f"total_samples={self.total_samples} is invalid: must be > 0")
        if not 0 <= self.consumed_samples < self.total_samples:
            raise ValueError(f"consumed_samples={self.consumed_samples} is invalid: must be in [0, total_samples="
                             f"{self.total_samples}); the run has already consumed every sample")
        if self.micro_batch_size <= 0 or self.data_parallel_size <= 0:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} and data_parallel_size="
                             f"{self.data_parallel_size} must be > 0")
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise ValueError(f"data_parallel_rank={self.data_parallel_rank} is invalid: must be in "
                             f"[0, {self.data_parallel_size})")

    def __len__(self) -> int:
        """Micro-batches this rank will yield (Megatron's sampler returns ``total_samples`` here instead)."""
        global_batch = self.micro_batch_size * self.data_parallel_size
        return (self.total_samples - self.consumed_samples) // global_batch

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.micro_batch_size * self.data_parallel_size
        rank_offset = self.data_parallel_rank * self.micro_batch_size
        for batch_start in range(self.consumed_samples, self.total_samples - global_batch + 1, global_batch):
            yield list(range(batch_start + rank_offset, batch_start + rank_offset + self.micro_batch_size))
