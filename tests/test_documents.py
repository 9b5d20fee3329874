"""Megatron's packed-document flags (--eod-mask-loss, --reset-position-ids, --reset-attention-mask): the layout of a
packed sample, a document computed as that document alone in training, the eod loss mask, and the plain forward
left as it was."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from megamythos.data.metadata import read_dataset_metadata
from megamythos.data.preprocess import PreprocessConfig, preprocess
from megamythos.data.pretraining import DOCUMENT_FLAGS, DataError, document_change, document_flags, documents_eod
from megamythos.data.tokenizer import Tokenizer
from megamythos.inference.evaluate import evaluate_loops, heldout_batches, recorded_documents
from megamythos.inference.evaluate import main as evaluate_main
from megamythos.inference.evaluate import parse_args as evaluate_args
from megamythos.inference.loading import load_model
from megamythos.model.lm import IGNORE_INDEX, MythosLM
from megamythos.model.row_layout import PackedDocuments, RowLayout
from megamythos.training.arguments import parse_args
from megamythos.training.launch import preflight
from tests.helpers import (
    corpus_prefix,
    make_dataset,
    one_error_line,
    run_single,
    small_config,
    synthetic_documents,
    tiny_args,
    trains,
    write_jsonl,
)

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
    layout = RowLayout.of_documents(ids, EOD, reset_positions=True, reset_attention=True)
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


# ------------------------------------------------------------------------------------------------ the run's flags
def test_the_flags_need_data_that_records_its_end_of_document_token(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Megatron's eod is the tokenizer's eos id, recorded with a dataset preprocessed with --append-eod; a dataset
    without such a record is named, with what to do."""
    write_jsonl(tmp_path / "docs.jsonl", synthetic_documents(10))
    for name, append_eod in (("eod", True), ("plain", False)):
        preprocess(PreprocessConfig(inputs=[str(tmp_path / "docs.jsonl")], output_prefix=str(tmp_path / name),
                                    tokenizer_model=tiny_tokenizer.model_path, append_eod=append_eod))
    with_eod, plain = str(tmp_path / "eod_text_document"), str(tmp_path / "plain_text_document")
    megatron = make_dataset(tmp_path / "megatron", num_docs=5)  # no record at all
    flags = document_flags(parse_args(["--reset-attention-mask", "--eod-mask-loss"]).to_dict())
    assert flags == {"eod_mask_loss": True, "reset_position_ids": False, "reset_attention_mask": True}
    assert documents_eod(flags, [with_eod]) == tiny_tokenizer.eos_id
    assert documents_eod(document_flags({}), [plain]) is None  # no flag: any data
    for prefix, why in ((plain, "was preprocessed without --append-eod"), (megatron, "has no record")):
        with pytest.raises(DataError, match=rf"^--eod-mask-loss --reset-attention-mask needs the documents' end token, "
                                            rf"but dataset {prefix} {why} .*--append-eod, or leave"):
            documents_eod(flags, [with_eod, prefix])
    # the launcher's preflight says so before DeepSpeed starts, in the same words
    with pytest.raises(DataError, match=rf"^--reset-position-ids needs the documents' end token, but dataset {plain}"):
        preflight(["--data-path", plain, "--reset-position-ids", "--save", str(tmp_path / "run"),
                   "--override", f"vocab_size={tiny_tokenizer.vocab_size}"], world_size=1)


def test_a_recorded_end_of_document_token_that_is_not_the_tokenizer_s_is_refused(tmp_path: Path,
                                                                                  tiny_tokenizer: Tokenizer) -> None:
    """One flipped digit in a record's ``eod_id`` (2 -> 3): the run reset positions, attention and the loss mask
    at another token than the documents end with, without a word (found 2026-12-07)."""
    write_jsonl(tmp_path / "docs.jsonl", synthetic_documents(10))
    preprocess(PreprocessConfig(inputs=[str(tmp_path / "docs.jsonl")], output_prefix=str(tmp_path / "eod"),
                                tokenizer_model=tiny_tokenizer.model_path, append_eod=True))
    prefix, flags = str(tmp_path / "eod_text_document"), {"eod_mask_loss": True}
    record = Path(prefix + ".json")
    good = record.read_text()
    assert f'"eod_id": {tiny_tokenizer.eos_id},' in good
    record.write_text(good.replace(f'"eod_id": {tiny_tokenizer.eos_id},', f'"eod_id": {tiny_tokenizer.eos_id ^ 1},'))
    with pytest.raises(DataError, match=rf"^{prefix}\.json records eod_id={tiny_tokenizer.eos_id ^ 1}, but the "
                                        rf"tokenizer it records .* ends documents with id {tiny_tokenizer.eos_id}"):
        documents_eod(flags, [prefix])
    record.write_text(good)
    assert documents_eod(flags, [prefix]) == tiny_tokenizer.eos_id


def test_evaluate_names_what_to_do_on_data_without_an_end_of_document_token(tmp_path: Path) -> None:
    """evaluate applies the flags a checkpoint recorded, so its refusal of data without an eod names the run that
    trained with them and what to pass, not a flag evaluate does not take ("leave --eod-mask-loss out")."""
    megatron = make_dataset(tmp_path / "megatron", num_docs=5)  # no record: no known end-of-document token
    loaded = SimpleNamespace(source=tmp_path / "ckpt", train_record={"args": {"eod_mask_loss": True}})
    with pytest.raises(DataError) as err:
        recorded_documents(loaded, evaluate_args(["--load", str(tmp_path / "ckpt"), "--data-path", megatron]))
    message = str(err.value)
    assert message.startswith(f"--eod-mask-loss needs the documents' end token, but dataset {megatron} has no record")
    assert "leave" not in message and f"the run of {tmp_path / 'ckpt'} trained with --eod-mask-loss" in message
    assert "--data-path" in message

def test_a_resume_with_other_document_flags_is_named() -> None:
    recorded = parse_args(["--eod-mask-loss"]).to_dict()
    assert document_change(recorded, parse_args(["--eod-mask-loss"]).to_dict(), "ckpt") is None
    assert document_change({}, parse_args([]).to_dict(), "ckpt") is None  # a record from before the flags
    assert document_change(recorded, parse_args(["--reset-position-ids"]).to_dict(), "ckpt") == (
        "the document flags differ from ckpt's: eod_mask_loss True -> False, reset_position_ids False -> True")


@pytest.fixture(scope="module")
@trains
def packed_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """One process, 2 iterations of the tiny model with all three flags on short documents (a two-line function
    each, so a 32-token sample packs several), validating at the end on one batch; returns the run directory."""
    out = tmp_path_factory.mktemp("packed_run")
    write_jsonl(out / "docs.jsonl", [f"def f{i}(x):\n    return x + {i}\n" for i in range(300)])
    tokenizer = read_dataset_metadata(corpus_prefix(corpus))["tokenizer_model"]
    preprocess(PreprocessConfig(inputs=[str(out / "docs.jsonl")], output_prefix=str(out / "short"),
                                tokenizer_model=tokenizer, append_eod=True))
    result = run_single([*tiny_args(corpus, 2), "--data-path", str(out / "short_text_document"), "--zero", "0",
                         "--micro-batch-size", "2", "--global-batch-size", "2", "--eval-interval", "2",
                         "--eval-iters", "1", "--save", str(out / "ckpt"), "--metrics-file", str(out / "m.jsonl"),
                         "--eod-mask-loss", "--reset-position-ids", "--reset-attention-mask"], out)
    (out / "log.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-6000:]
    return out


@pytest.mark.launch
def test_a_run_with_the_flags_records_them_and_evaluate_validates_as_it_did(packed_run: Path, capsys) -> None:
    """The flags are recorded with the checkpoint, and evaluate applies them: its loss on the run's validation batch
    is the run's validation loss, which the same batch without the flags would not give."""
    full_record = json.loads((packed_run / "ckpt" / "iter_0000002" / "train_args.json").read_text())
    record = full_record["args"]
    assert document_flags(record) == dict.fromkeys(DOCUMENT_FLAGS, True)
    assert full_record["bf16"] is False  # the precision it trained in (tiny_args: --no-bf16), judged at a resume
    assert "packed documents: PackedDocuments(eod=" in (packed_run / "log.txt").read_text()
    lines = [json.loads(line) for line in (packed_run / "m.jsonl").read_text().splitlines()]
    validated = [line["lm loss validation"] for line in lines if "lm loss validation" in line]
    assert len(validated) == 1 and all(math.isfinite(line.get("lm loss", 0.0)) for line in lines)

    argv = ["--load", str(packed_run / "ckpt"), "--loops", "3", "--exit-threshold", "0", "--eval-iters", "1",
            "--micro-batch-size", "2", "--out", str(packed_run / "eval")]
    assert evaluate_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["results"][0]["loss"] == pytest.approx(validated[0], rel=1e-5)
    loaded = load_model(packed_run / "ckpt")
    cfg = evaluate_args(argv)
    batch = heldout_batches(loaded, cfg)
    documents = recorded_documents(loaded, cfg)
    assert (batch[0][0] == documents.eod).sum() >= 2  # the batch packs documents
    plain = evaluate_loops(loaded.model, batch, [3])[0].loss
    assert abs(plain - validated[0]) > 1e-3 * validated[0]
    megatron = make_dataset(packed_run / "megatron", num_docs=60)  # no record: no known end-of-document token
    code = evaluate_main([*argv[:-2], "--out", str(packed_run / "eval2"), "--data-path", megatron])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err).startswith("error: --eod-mask-loss --reset-position-ids "
                                                        "--reset-attention-mask needs the documents' end token"), err


@pytest.mark.launch
def test_a_hugging_face_export_records_the_flags_and_scores_each_document_given_a_row(packed_run: Path) -> None:
    """A run trained with the three flags, exported with ``--format hf``: its config said nothing of them (found
    2026-12-07), so nothing told a user that the model scores a row of several documents as one sequence
    (positions 0.., attention across the eods), otherwise than it trained. The config records them
    (``packed_documents``), and a document given a row of its own gets the logits training's layout gave it."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from megamythos.checkpoint.export import main as export_main

    out = packed_run / "hf"
    assert export_main([str(packed_run / "ckpt"), str(out), "--format", "hf"]) == 0
    assert json.loads((out / "config.json").read_text())["packed_documents"] == dict.fromkeys(DOCUMENT_FLAGS, True)
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    loaded = load_model(packed_run / "ckpt")
    cfg = evaluate_args(["--load", str(packed_run / "ckpt"), "--eval-iters", "1", "--micro-batch-size", "2"])
    row = heldout_batches(loaded, cfg)[0][0][:1]
    documents = recorded_documents(loaded, cfg)
    ends = [int(i) + 1 for i in (row[0] == documents.eod).nonzero()[:, 0] if i + 1 < row.shape[1]]
    assert ends  # the row packs documents: an eod before its last token
    with torch.no_grad():
        trained = loaded.model(row, n_loops=3, exit_threshold=0.0, documents=documents).logits
        assert not torch.allclose(hf(row, n_loops=3, exit_threshold=0.0).logits, trained, atol=1e-4)
        for start, end in zip([0, *ends], [*ends, row.shape[1]]):
            alone = hf(row[:, start:end], n_loops=3, exit_threshold=0.0).logits
            assert torch.allclose(alone, trained[:, start:end], atol=1e-4), (start, end)
