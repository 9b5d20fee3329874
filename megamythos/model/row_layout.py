"""Per-row layouts of a batch: padded batches at inference, and samples packing several documents in training.

A padded batch: what an attention mask [B, L] (1 = real token, 0 = padding) means to the model, Hugging Face's
convention for a causal LM, so that a left-padded prompt is computed as the prompt alone:

    position[b, s] = number of real tokens before s in row b      (``attention_mask.cumsum(-1) - 1``)
    query s of row b attends to key l  <=>  l <= s  and  (l is real  or  l == s)

RoPE rotates each row by its own positions, and no query sees a padding key but its own: a padding query, which
under left padding has no real key at or before it, attends to itself, so its (unspecified) output stays finite.

Packed documents (Megatron-LM's ``get_ltor_masks_and_position_ids``): a training sample of S tokens holds the ends
and starts of documents, each ended by the ``eod`` token. With d[b, s] = the number of eod tokens before s (an eod
belongs to the document it ends),

    reset_position_ids:    position[b, s] = s - (the first s' of document d[b, s])   (0 after each eod)
    reset_attention_mask:  query s of row b attends to key l  <=>  l <= s  and  d[b, l] == d[b, s]
    eod_mask_loss:         the label at s is not scored where input token s is eod (it is the next document's first)

so with both resets every document computes as that document alone (block-causal attention, as torchtitan's
document masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from megamythos.model.token_subset import TokenSubset

IGNORE_INDEX = -100  # a label that is not scored (padding), as in PyTorch's cross-entropy and transformers


class RowLayout(NamedTuple):
    """The S new tokens of a batch whose rows differ in layout (padding, packed documents), after ``L - S`` cached
    ones.

    ``positions`` [B, S] int64: their RoPE positions (None: the batch's shared positions); ``real`` [B, S] bool:
    which of them are real (None: all); ``mask`` [B, 1, S, L] bool (True = attend): each new token's keys among
    the L cached + new ones (None: causal).
    """

    positions: torch.Tensor | None
    real: torch.Tensor | None
    mask: torch.Tensor | None

    @classmethod
    def of(cls, attention_mask: torch.Tensor, seq: int) -> RowLayout:
        """From ``attention_mask`` [B, L] (nonzero = real) of the cached and the ``seq`` new tokens."""
        real = attention_mask.bool()
        kv_len = real.shape[1]
        positions = (real.long().cumsum(dim=1) - 1).clamp_min(0)[:, kv_len - seq:]
        key = torch.arange(kv_len, device=real.device)
        query = key[kv_len - seq:, None]
        mask = (key <= query) & (real[:, None, :] | (key == query))  # [B, S, L]
        return cls(positions, real[:, kv_len - seq:], mask.unsqueeze(1))

    @classmethod
    def of_documents(cls, input_ids: torch.Tensor, eod: int, reset_positions: bool, reset_attention: bool) -> RowLayout:
        """The packed documents of input_ids [B, S] (see the module docstring): per-row positions with
        ``reset_positions``, the block-causal mask [B, 1, S, S] with ``reset_attention``; no host sync."""
        is_eod = input_ids == eod
        document = is_eod.cumsum(dim=1) - is_eod.long()  # [B, S]: eod tokens before s
        index = torch.arange(input_ids.shape[1], device=input_ids.device)
        positions = mask = None
        if reset_positions:
            starts = F.pad(is_eod[:, :-1], (1, 0), value=True)  # [B, S]: s is a document's first token
            positions = index - torch.where(starts, index, 0).cummax(dim=1).values
        if reset_attention:
            causal = index[None, :] <= index[:, None]  # [S, S]
            mask = ((document[:, :, None] == document[:, None, :]) & causal).unsqueeze(1)
        return cls(positions, None, mask)

    def query_mask(self, queries: TokenSubset | None) -> torch.Tensor:
        """``mask``, or for a subset of the new tokens its rows in the subset's padded layout [B, 1, W, L]
        (padding slots see every key, so their discarded rows stay finite)."""
        if queries is None:
            return self.mask
        rows = self.mask[queries.row, 0, queries.col]  # [N, L]
        return queries.pad(rows.unsqueeze(0), fill=True).unsqueeze(1)

    def real_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-token ``values`` [B, S] over the real tokens (0 without any)."""
        if self.real is None:
            return values.mean()
        return (values * self.real).sum() / self.real.sum().clamp_min(1)


@dataclass(frozen=True)
class PackedDocuments:
    """Megatron's flags for training samples that pack documents ended by the token id ``eod`` (the dataset's
    tokenizer's eos id), under their command-line names (``--eod-mask-loss``, ...); see the module docstring."""

    eod: int
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False

    def layout(self, input_ids: torch.Tensor) -> RowLayout | None:
        """The per-row layout of input_ids [B, S] (:meth:`RowLayout.of_documents`); None without a reset."""
        if not (self.reset_position_ids or self.reset_attention_mask):
            return None
        return RowLayout.of_documents(input_ids, self.eod, self.reset_position_ids, self.reset_attention_mask)

    def scored(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """labels [B, S] with IGNORE_INDEX (not scored) where the input token is eod under ``eod_mask_loss``
        (Megatron's ``loss_mask[data == eod] = 0``), else as given."""
        return labels.masked_fill(input_ids == self.eod, IGNORE_INDEX) if self.eod_mask_loss else labels


def pads_only_row_ends(attention_mask: torch.Tensor) -> bool:
    """Whether ``attention_mask`` [B, L] (nonzero = real) has no real token after a padding one in any row (right
    padding, or none); one host sync."""
    real = attention_mask.bool()
    return not bool((real[:, 1:] & ~real[:, :-1]).any())


def scores_a_token(input_ids: torch.Tensor, labels: torch.Tensor, documents: PackedDocuments | None) -> bool:
    """Whether the loss of input_ids [B, S] and labels [B, S] scores any token (not every label IGNORE_INDEX once
    ``documents``' eod mask applies): a micro-batch that scores none has loss 0 and no place in a mean loss."""
    scored = labels if documents is None else documents.scored(input_ids, labels)
    return bool((scored != IGNORE_INDEX).any())
