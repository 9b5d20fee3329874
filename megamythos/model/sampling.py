"""Generation's sampling settings: what :mod:`megamythos.inference.generate` draws with, and what the Hugging Face
export's ``generation_config.json`` carries as ``generate()``'s defaults."""
from __future__ import annotations

from dataclasses import dataclass

from megamythos.model.lm import check_loop_count


@dataclass
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n_loops: int | None = None
    exit_threshold: float | None = None  # > 0: a token exits once its state's relative change falls below it;
    # 0: every loop; None: the model config's exit_threshold
    absorb: bool = True
    eos_id: int | None = None
    vocab_limit: int | None = None  # ids from here on are never sampled: a padded vocabulary's, past the tokenizer's

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        check_loop_count(self.n_loops)
        if not self.temperature >= 0:  # NaN too
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.exit_threshold is not None and not self.exit_threshold >= 0:
            raise ValueError(f"exit_threshold={self.exit_threshold} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")
