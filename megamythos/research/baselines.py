"""Dense GPT baseline built from the same blocks as the Prelude/Coda, sized to match a looped model.

Used by the studies and benchmarks to compare the recurrent-depth MoE model against a standard transformer
with (a) the same unique parameters or (b) the same training FLOPs per token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megamythos.model.config import ModelConfig
from megamythos.model.layers import RMSNorm
from megamythos.model.lm import DenseBlock, MythosOutput
from megamythos.model.params import (
    attention_fwd_flops_per_token,
    count,
    dense_block_matmul_params,
    dense_block_params,
    embedding_params,
)


class DenseLM(nn.Module):
    """Embeddings -> ``n_layers`` DenseBlocks -> RMSNorm -> LM head (tied as in ``config``)."""

    def __init__(self, config: ModelConfig, n_layers: int) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DenseBlock(config) for _ in range(n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        out_std = config.init_std / math.sqrt(2 * n_layers)
        for name, param in self.named_parameters():
            if param.ndim >= 2:
                is_output = name.endswith(("wo.weight", "w_down.weight"))
                nn.init.normal_(param, std=out_std if is_output else config.init_std)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: object) -> MythosOutput:
        """Same call and output as :class:`MythosLM` (loop arguments are ignored: depth is fixed)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok_embeddings(input_ids)
        for block in self.layers:
            x = block(x, positions)
        logits = self.lm_head(self.norm(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return MythosOutput(logits, loss, logits.new_zeros((), dtype=torch.float32),
                            {"n_loops": torch.tensor(1.0), "depth": torch.ones(input_ids.shape)})

    def forward_flops_per_token(self, seq_len: int, loops: float = 1.0, frozen_loops: float = 0.0) -> float:
        """Forward FLOPs per token (``loops`` and ``frozen_loops`` are ignored: depth is fixed)."""
        return dense_train_flops_per_token(self.config, len(self.layers), seq_len) / 3


def dense_params(config: ModelConfig, n_layers: int) -> int:
    """Parameters of ``DenseLM(config, n_layers)``: embeddings (+ untied LM head), blocks, final norm."""
    return embedding_params(config) + n_layers * dense_block_params(config) + config.dim


def dense_train_flops_per_token(config: ModelConfig, n_layers: int, seq_len: int) -> float:
    """3 x forward: 2 per weight multiply-add of the blocks and LM head, plus causal attention (context S/2)."""
    fwd = (2 * (n_layers * dense_block_matmul_params(config) + config.vocab_size * config.dim)
           + n_layers * attention_fwd_flops_per_token(config, seq_len))
    return 3 * fwd


def matching_dense_layers(config: ModelConfig, target: str, seq_len: int) -> int:
    """Dense depth whose unique parameters (``target="params"``, or twice them: ``"2params"``) or training FLOPs
    per token (``"flops"``) come closest to the looped model's at its mean loop count."""
    looped = count(config, seq_len=seq_len)
    if target in ("params", "2params"):
        wanted = looped.total * (2 if target == "2params" else 1)
        score = lambda n: abs(dense_params(config, n) - wanted)  # noqa: E731
    elif target == "flops":
        score = lambda n: abs(dense_train_flops_per_token(config, n, seq_len) - looped.train_flops_per_token)  # noqa: E731
    else:
        raise ValueError(f"target={target!r}: choose 'params', '2params' or 'flops'")
    return min(range(1, 257), key=score)

