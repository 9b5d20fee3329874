"""Megatron's packed-document flags (--eod-mask-loss, --reset-position-ids, --reset-attention-mask): the layout of a
packed sample, a document computed as that document alone in training, the eod loss mask, and the plain forward
left as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from megamythos.model.lm import IGNORE_INDEX, MythosLM
from megamythos.model.padding import PackedDocuments, Padding
from tests.helpers import small_config

EOD = 2
FIRST, SECOND = 7, 9  # document lengths in one packed row; the first ends with EOD


def megatron_layout(ids: torch.Tensor, eod: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Megatron-LM's get_ltor_masks_and_position_ids (reset_position_ids and reset_attention_mask), its loop as
    written there: (positions [B, S], mask [B, S, S] True = attend)."""
    batch, seq = ids.shape
    mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool)).repeat(batch, 1, 1)
    positions = torch.arange(seq).repeat(batch, 1)
    for b in range(batch):
        prev = 0
        for i in (ids[b] == eod).nonzero().flatten().tolist():
            mask[b, i + 1:, :i + 1] = False
            positions[b, i + 1:] -= i + 1 - prev
            prev = i + 1
    return positions, mask


def packed_row(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(one row [1, FIRST + SECOND]: a document ended by EOD, then the start of the next; the second alone)."""
    first = torch.randint(3, 97, (FIRST,), generator=generator)
    first[-1] = EOD
    second = torch.randint(3, 97, (SECOND,), generator=generator)
    return torch.cat((first, second))[None], second[None]


def kept_embeddings(model: MythosLM) -> list[torch.Tensor]:
    """The token embeddings [B, S, H] of each forward of ``model``, their .grad kept for the test to read."""
    kept: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        kept.append(out)

    model.tok_embeddings.register_forward_hook(keep)
    return kept


def test_the_layout_is_megatrons() -> None:
    ids = torch.tensor([[5, 6, EOD, 7, 8, 9, EOD, 3], [EOD, 1, 1, EOD, EOD, 4, 4, 4], [1, 1, 1, 1, 1, 1, 1, 1]])
    positions, mask = megatron_layout(ids, EOD)
    layout = Padding.of_documents(ids, EOD, reset_positions=True, reset_attention=True)
    assert torch.equal(layout.positions, positions) and torch.equal(layout.mask[:, 0], mask)
    assert layout.real is None
    only_positions = PackedDocuments(EOD, reset_position_ids=True).layout(ids)
    only_mask = PackedDocuments(EOD, reset_attention_mask=True).layout(ids)
    assert only_positions.mask is None and torch.equal(only_positions.positions, positions)
    assert only_mask.positions is None and torch.equal(only_mask.mask[:, 0], mask)
    assert PackedDocuments(EOD, eod_mask_loss=True).layout(ids) is None


@pytest.mark.parametrize("attn_type", ["mla", "gqa"])
@pytest.mark.parametrize("overrides", [{}, {"checkpoint_loops": True, "checkpoint_dense_blocks": True},
                                       {"backprop_loops": 2}])
def test_a_packed_document_trains_as_that_document_alone(attn_type: str, overrides: dict) -> None:
    """Both resets: the second document of a packed row gets its logits alone at positions from 0 (fp32, tight),
    in every loop and in prelude and coda; no gradient reaches the first document's tokens from its loss, with
    activation checkpointing and truncated backprop too."""
    torch.manual_seed(0)
    model = MythosLM(small_config(attn_type=attn_type, **overrides)).train()
    row, second = packed_row(torch.Generator().manual_seed(1))
    documents = PackedDocuments(EOD, reset_position_ids=True, reset_attention_mask=True)
    embedded = kept_embeddings(model)
    packed = model(row, n_loops=4, documents=documents)
    alone = model(second, n_loops=4)
    got, want = packed.logits[0, FIRST:], alone.logits[0]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    packed.logits[0, FIRST:].square().mean().backward()
    grad = embedded[0].grad[0].abs().sum(dim=-1)
    assert (grad[:FIRST] == 0).all() and (grad[FIRST:] > 0).all()


def test_without_the_resets_a_document_sees_the_one_before() -> None:
    """The check above can fail: plain causal attention over the packed row, or reset positions alone, give other
    logits. (The block-causal mask alone gives the same: RoPE scores depend on relative positions only.)"""
    torch.manual_seed(0)
    model = MythosLM(small_config()).train()
    row, second = packed_row(torch.Generator().manual_seed(1))
    alone = model(second, n_loops=4).logits[0]
    for documents in (None, PackedDocuments(EOD, reset_position_ids=True)):
        got = model(row, n_loops=4, documents=documents).logits[0, FIRST:]
        assert (got - alone).abs().max() > 1e-3 * alone.abs().max(), documents


def test_loop_capacity_trains_with_document_masks() -> None:
    """loop_capacity computes a subset of each row's tokens per loop: they attend within their documents only."""
    torch.manual_seed(0)
    model = MythosLM(small_config(loop_capacity=(1.0, 0.5, 0.5), max_loops=3)).train()
    row, _ = packed_row(torch.Generator().manual_seed(1))
    embedded = kept_embeddings(model)
    out = model(row, n_loops=3, documents=PackedDocuments(EOD, reset_position_ids=True, reset_attention_mask=True))
    out.logits[0, FIRST:].square().mean().backward()
    assert (embedded[0].grad[0, :FIRST] == 0).all()


def test_eod_mask_loss_scores_every_position_but_those_after_an_eod() -> None:
    """Megatron's loss_mask[data == eod] = 0, the loss the mean over the scored positions: exactly the positions
    whose input is EOD (predicting the next document's first token) leave the mean."""
    torch.manual_seed(0)
    model = MythosLM(small_config()).train()
    ids = torch.tensor([[5, 6, EOD, 7, 8, EOD, EOD, 3, 4]])
    labels = torch.tensor([[6, EOD, 7, 8, EOD, EOD, 3, 4, IGNORE_INDEX]])
    documents = PackedDocuments(EOD, eod_mask_loss=True)
    scored = documents.scored(ids, labels)
    assert (scored != IGNORE_INDEX).tolist() == [[True, True, False, True, True, False, False, True, False]]
    out = model(ids, labels=labels, n_loops=2, documents=documents)
    keep = scored[0] != IGNORE_INDEX
    expected = F.cross_entropy(out.logits[0, keep].float(), labels[0, keep])
    assert torch.allclose(out.loss, expected, rtol=1e-6)
    assert not torch.allclose(model(ids, labels=labels, n_loops=2).loss, expected, rtol=1e-3)


class OpLog(TorchFunctionMode):
    """The torch functions a forward calls, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_without_flags_the_forward_is_the_plain_one() -> None:
    """Flags off (or only --eod-mask-loss without labels), the forward computes today's plain causal forward: the
    same ops, bit-identical logits."""
    torch.manual_seed(0)
    model = MythosLM(small_config()).train()
    ids = torch.randint(0, 97, (2, 12))
    outs, logs = [], []
    for documents in (None, PackedDocuments(EOD), PackedDocuments(EOD, eod_mask_loss=True)):
        with OpLog() as log:
            outs.append(model(ids, n_loops=3, documents=documents).logits)
        logs.append(log.calls)
    assert all(torch.equal(outs[0], o) for o in outs[1:]) and all(log == logs[0] for log in logs[1:])


def test_documents_refuse_a_cache_or_an_attention_mask() -> None:
    model = MythosLM(small_config()).eval()
    ids = torch.randint(0, 97, (1, 5))
    with pytest.raises(ValueError, match="^documents lays out whole packed samples"):
        model(ids, attention_mask=torch.ones_like(ids), documents=PackedDocuments(EOD))
