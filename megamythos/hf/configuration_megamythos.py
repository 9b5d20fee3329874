"""The Hugging Face config of an exported MythosLM: every :class:`ModelConfig` field, flat, plus the generation
settings ``n_loops`` (recurrent iterations per token; None -> the trained ``mean_loops``) and ``exit_threshold``
(a token stops iterating once ||h_{t+1} - h_t|| / ||h_{t+1}|| falls below it; 0 runs every loop), which the model
reads on every call unless the call passes its own, and ``packed_documents``: the training run's packed-document
flags (``{"eod_mask_loss", "reset_position_ids", "reset_attention_mask"}`` -> bool; None where not recorded), a
record the model does not read: a row is one sequence (positions 0.., attention over the whole row), so a run
trained with the resets scores a row of several documents otherwise than it trained; give each document a row.

Shipped inside an export directory (``from megamythos.x import`` becomes ``from .x import``), so loading it needs
only ``transformers`` and ``torch``.
"""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from megamythos.model.config import ModelConfig


class MegamythosConfig(PretrainedConfig):
    """Flat ModelConfig fields (``dim``, ``n_heads``, ``mean_loops``, ...) + ``n_loops`` + ``packed_documents``; the
    usual Hugging Face names (``hidden_size``, ``max_position_embeddings``, ...) are aliases of ours."""

    model_type = "megamythos"
    attribute_map = {"hidden_size": "dim", "num_attention_heads": "n_heads", "max_position_embeddings": "max_seq_len"}

    def __init__(self, n_loops: int | None = None, packed_documents: dict[str, bool] | None = None,
                 **kwargs: Any) -> None:
        for name, default in ModelConfig().to_dict().items():
            setattr(self, name, kwargs.pop(name, default))
        if n_loops is not None and not n_loops >= 1:  # 0 read as "unset" ran the trained depth unsaid
            raise ValueError(f"n_loops={n_loops} must be >= 1 (None: the trained mean_loops)")
        self.n_loops = n_loops
        self.packed_documents = packed_documents
        kwargs.setdefault("tie_word_embeddings", self.tie_embeddings)
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> MegamythosConfig:
        return cls(**config.to_dict(), **kwargs)

    def model_config(self) -> ModelConfig:
        """The validated :class:`ModelConfig` these fields describe. ``tie_word_embeddings`` is transformers' name
        of ``tie_embeddings`` and has to agree with it: the weights are tied or not as the model trained
        (``from_pretrained(..., tie_word_embeddings=X)`` against the export's own left the head of a tied export
        newly initialised, and did not tie an untied one); a ``ValueError`` says so."""
        if self.tie_word_embeddings != self.tie_embeddings:
            held = ("tied (one matrix: the export holds no lm_head weight to load)" if self.tie_embeddings
                    else "untied (two matrices: tying them would drop one)")
            raise ValueError(f"tie_word_embeddings={self.tie_word_embeddings}, but this model's weights are {held}, "
                             f"tie_embeddings={self.tie_embeddings}: leave tie_word_embeddings out (the model's "
                             "setting applies)")
        return ModelConfig.from_dict({name: getattr(self, name) for name in ModelConfig().to_dict()})
