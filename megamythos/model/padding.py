"""Padded batches at inference: what an attention mask [B, L] (1 = real token, 0 = padding) means to the model.

Hugging Face's convention for a causal LM, so that a left-padded prompt is computed as the prompt alone:

    position[b, s] = number of real tokens before s in row b      (``attention_mask.cumsum(-1) - 1``)
    query s of row b attends to key l  <=>  l <= s  and  (l is real  or  l == s)

RoPE rotates each row by its own positions, and no query sees a padding key but its own: a padding query, which
under left padding has no real key at or before it, attends to itself, so its (unspecified) output stays finite.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from megamythos.model.token_subset import TokenSubset


class Padding(NamedTuple):
    """The S new tokens of a padded batch after ``L - S`` cached ones.

    ``positions`` [B, S] int64: their RoPE positions; ``real`` [B, S] bool: which of them are real; ``mask``
    [B, 1, S, L] bool (True = attend): each new token's keys among the L cached + new ones.
    """

    positions: torch.Tensor
    real: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, attention_mask: torch.Tensor, seq: int) -> Padding:
        """From ``attention_mask`` [B, L] (nonzero = real) of the cached and the ``seq`` new tokens."""
        real = attention_mask.bool()
        kv_len = real.shape[1]
        positions = (real.long().cumsum(dim=1) - 1).clamp_min(0)[:, kv_len - seq:]
        key = torch.arange(kv_len, device=real.device)
        query = key[kv_len - seq:, None]
        mask = (key <= query) & (real[:, None, :] | (key == query))  # [B, S, L]
        return cls(positions, real[:, kv_len - seq:], mask.unsqueeze(1))

    def query_mask(self, queries: TokenSubset | None) -> torch.Tensor:
        """``mask``, or for a subset of the new tokens its rows in the subset's padded layout [B, 1, W, L]
        (padding slots see every key, so their discarded rows stay finite)."""
        if queries is None:
            return self.mask
        rows = self.mask[queries.row, 0, queries.col]  # [N, L]
        return queries.pad(rows.unsqueeze(0), fill=True).unsqueeze(1)

    def real_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-token ``values`` [B, S] over the real tokens (0 without any)."""
        return (values * self.real).sum() / self.real.sum().clamp_min(1)
