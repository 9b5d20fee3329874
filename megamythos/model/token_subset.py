"""Compaction: the tokens of a [B, S] batch that are still iterating, gathered so only they are computed.

A :class:`TokenSubset` holds N chosen tokens in two layouts: *flat*, one row of N tokens [1, N, ...] in which the
projections and the MoE run (a per-token computation does not care which sequence a token came from), and
*padded*, [B, W, ...] with W the most tokens any sequence kept, in which each chosen token attends to the keys of
its own sequence.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class TokenSubset(NamedTuple):
    """N tokens of a [B, S] batch, in row-major order.

    ``index`` [N]: flat position b * S + s; ``row`` [N]: b; ``col`` [N]: s; ``slot`` [N]: the token's place among
    its row's chosen tokens (its column in the padded layout); ``width``: W = the most tokens of one row.
    """

    index: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    slot: torch.Tensor
    width: int
    batch: int

    @classmethod
    def of(cls, chosen: torch.Tensor) -> TokenSubset:
        """The tokens where ``chosen`` [B, S] bool is True (ragged rows; two host syncs: the count and W)."""
        batch, seq = chosen.shape
        index = chosen.flatten().nonzero().squeeze(1)
        row, col = index // seq, index % seq
        per_row = chosen.sum(dim=1)
        slot = torch.arange(index.numel(), device=index.device) - (per_row.cumsum(0) - per_row)[row]
        return cls(index, row, col, slot, int(per_row.max()), batch)

    @classmethod
    def top(cls, score: torch.Tensor, k: int) -> TokenSubset:
        """The k tokens of each row with the highest ``score`` [B, S] (static shapes, no host sync): W = k."""
        batch, seq = score.shape
        col = score.topk(k, dim=1, sorted=False).indices.sort(dim=1).values.flatten()
        row = torch.arange(batch, device=score.device).repeat_interleave(k)
        slot = torch.arange(k, device=score.device).repeat(batch)
        return cls(row * seq + col, row, col, slot, k, batch)

    def mask(self, seq: int) -> torch.Tensor:
        """[B, S] bool, True at the chosen tokens."""
        chosen = torch.zeros(self.batch * seq, dtype=torch.bool, device=self.index.device)
        return chosen.index_fill(0, self.index, True).view(self.batch, seq)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, ...] -> the chosen tokens' rows [1, N, ...]."""
        return x.flatten(0, 1).index_select(0, self.index).unsqueeze(0)

    def scatter(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A copy of x [B, S, ...] with the chosen tokens' rows replaced by ``values`` [1, N, ...]."""
        return x.flatten(0, 1).index_copy(0, self.index, values.squeeze(0).to(x.dtype)).view_as(x)

    def pad(self, values: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """Flat [1, N, ...] -> padded [B, W, ...]; padding slots hold ``fill``."""
        padded = values.new_full((self.batch, self.width, *values.shape[2:]), fill)
        padded[self.row, self.slot] = values.squeeze(0)
        return padded

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """Padded [B, W, ...] -> flat [1, N, ...]."""
        return padded[self.row, self.slot].unsqueeze(0)

    def attention_mask(self, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Causal mask [B, 1, W, kv_len] (True = attend) for the padded queries at ``positions`` [S] (the batch's
        absolute positions) against keys at the ``kv_len`` positions that end where the batch ends (the batch's
        own tokens, after any cached ones). Padding queries see every key, so their (discarded) rows stay finite.
        """
        query_pos = self.pad(positions[self.col].unsqueeze(0), fill=torch.iinfo(positions.dtype).max)  # [B, W]
        key_pos = torch.arange(kv_len, device=positions.device) + (positions[-1] + 1 - kv_len)
        return key_pos[None, None, None, :] <= query_pos[:, None, :, None]
