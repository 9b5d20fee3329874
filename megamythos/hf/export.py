"""Write a trained :class:`MythosLM` as a Hugging Face directory that loads without megamythos installed.

    python -m megamythos.checkpoint.export runs/tiny/checkpoints exported/tiny-hf --format hf

Directory: ``config.json`` (:class:`MegamythosConfig` with ``auto_map``), ``model.safetensors``,
``generation_config.json`` (eos and pad ids, and the sampling defaults of ``megamythos.inference.generate``:
:func:`sampling_settings`), ``tokenizer.json`` + ``tokenizer_config.json`` (the SentencePiece model converted to a
``tokenizers`` BPE or Unigram that gives the same ids), and the modeling code: the two wrapper modules of this
package and, found by following their ``from megamythos.<package>.X import`` lines, every library module they
need, with those imports rewritten to ``from .X import`` (module file names are unique across the package; transformers'
dynamic-module loader follows relative imports of files in the same directory). The code is generated from the
library at export time, never kept as a second copy.
"""
from __future__ import annotations

import ast
import importlib.util
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError
from megamythos.model.lm import MythosLM
from megamythos.model.sampling import SamplingConfig

if TYPE_CHECKING:
    from sentencepiece.sentencepiece_model_pb2 import ModelProto
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

ENTRY_MODULES = ("megamythos.hf.configuration_megamythos", "megamythos.hf.modeling_megamythos")
AUTO_MAP = {"AutoConfig": "configuration_megamythos.MegamythosConfig",
            "AutoModelForCausalLM": "modeling_megamythos.MythosForCausalLM"}
_LIBRARY_IMPORT = re.compile(r"^(\s*)from megamythos\.(?:\w+\.)*(\w+) import", flags=re.MULTILINE)


# Texts the exported tokenizer must encode as ours does: code, spaces in runs and at the ends, digits, characters
# outside a small vocabulary, and spellings of special and byte pieces.
TOKENIZER_PROBES = ("x", "def main(argv):\n    return 0\n", "x = [1, 22, 333]  # digits\t\n", "  two  spaces  ",
                    "héllo wörld 日本語 🙂", "</s> <s> <unk> <0x41>")


# Whitespace runs where a unigram lattice holds splits of equal score (the same pieces in another order), whose
# ties transformers' Unigram breaks otherwise than SentencePiece.
WHITESPACE_RUNS = tuple(f"{run * n}x" for run in (" ", "\t") for n in range(1, 97))


class HFExportError(UserError, RuntimeError):
    """The model code cannot be shipped as a self-contained directory, or the tokenizer not converted."""


def _library_imports(module: str, source: str) -> list[str]:
    """The ``megamythos.*`` modules ``source`` imports; anything but ``from megamythos.x import`` is refused."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("megamythos")):
            if node.level or importlib.util.find_spec(node.module).submodule_search_locations is not None:
                raise HFExportError(f"{module} imports {'.' * node.level}{node.module}: shipped modules may only "
                                    "use `from megamythos.<package>.<module> import ...` (a module, not a package)")
            found.append(node.module)
        elif isinstance(node, ast.Import) and any(a.name.startswith("megamythos") for a in node.names):
            raise HFExportError(f"{module} uses `import megamythos...`; write `from megamythos.<module> import`")
    return found


def shipped_sources() -> dict[str, str]:
    """{file name: source with relative imports} of the wrapper modules and every library module they reach."""
    sources: dict[str, str] = {}
    owners: dict[str, str] = {}
    pending = list(ENTRY_MODULES)
    while pending:
        module = pending.pop()
        name = module.rsplit(".", 1)[1] + ".py"
        if name in sources:
            if owners[name] != module:
                raise HFExportError(f"{module} and {owners[name]} would both ship as {name}")
            continue
        text = Path(importlib.util.find_spec(module).origin).read_text()
        pending += _library_imports(module, text)
        sources[name], owners[name] = _LIBRARY_IMPORT.sub(r"\1from .\2 import", text), module
    return sources


def spm_merges(proto: ModelProto) -> list[tuple[str, str]]:
    """The BPE merges of a SentencePiece model, in the order SentencePiece prefers them: every split of a normal
    piece (type 1) into two normal pieces, ranked by the merged piece's score (higher first), then by its id."""
    normal = {piece.piece: (-piece.score, i) for i, piece in enumerate(proto.pieces) if piece.type == piece.NORMAL}
    ranked = sorted((rank, token[:cut], token[cut:]) for token, rank in normal.items()
                    for cut in range(1, len(token)) if token[:cut] in normal and token[cut:] in normal)
    return [(left, right) for _, left, right in ranked]


def spm_unigram_vocab(proto: ModelProto) -> list[tuple[str, float]]:
    """A SentencePiece unigram model's ``(piece, score)`` list as tokenizers' ``Unigram`` takes it. SentencePiece
    never matches a control, unknown, byte or unused piece against text (byte fallback finds byte pieces by
    name); ``Unigram`` would, at their score 0, wherever the text spells one (``</s>``, ``<0x41>``). Each gets
    ``len(piece)`` x the lowest normal score - 10 instead: below every path of normal pieces over its characters
    (each covers at least one character at no less than the lowest score), so it never wins one. Where a character
    is no piece (:func:`spm_unknown_char`), ``Unigram``'s unknown node scores lower still; ``hf_tokenizer`` cuts
    the text around such characters, as SentencePiece's lattice does."""
    lowest = min(piece.score for piece in proto.pieces if piece.type == piece.NORMAL)
    never_matched = {proto.SentencePiece.CONTROL, proto.SentencePiece.UNKNOWN, proto.SentencePiece.BYTE,
                     proto.SentencePiece.UNUSED}
    return [(piece.piece, len(piece.piece) * lowest - 10.0 if piece.type in never_matched else piece.score)
            for piece in proto.pieces]


def spm_unknown_char(proto: ModelProto) -> str:
    """A regex matching one character that is not itself a normal piece of ``proto`` (SentencePiece encodes it
    by byte fallback or as unknown, never inside a longer piece)."""
    known = "".join(f"\\x{{{ord(piece.piece):X}}}" for piece in proto.pieces
                    if piece.type == piece.NORMAL and len(piece.piece) == 1)
    return f"[^{known}]"


def spm_control_pieces(proto: ModelProto) -> list[str]:
    """The control pieces of a SentencePiece model (ours: ``<pad>``, ``<s>``, ``</s>``): its decoder renders
    them as nothing."""
    return [piece.piece for piece in proto.pieces if piece.type == piece.CONTROL]


def hf_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Our SentencePiece model as a transformers fast tokenizer giving the same ids (no bos/eos added).

    transformers' converter follows the model's normaliser and builds a ``tokenizers`` BPE or Unigram model as
    ours is: a BPE gets its merges ranked as SentencePiece applies them (:func:`spm_merges`; converters before
    transformers 5.24 made none from a vocabulary), a Unigram its scores (:func:`spm_unigram_vocab`). Pre-tokenisers
    add what SentencePiece does implicitly: a Unigram's text is cut around characters that are no piece
    (:func:`spm_unknown_char`); digits stay single pieces (``split_digits``); and, where our tokenizer proved no
    piece crosses the start of a space run (its segment cache), text is cut there first, which keeps encoding
    linear in the text length.

    Special tokens: eos, pad and unk are named where the model has them (SentencePiece's own trainer makes no
    pad); bos is not (no bos is added, training never saw one), and every other control piece
    (:func:`spm_control_pieces`: ``<s>``) is an extra special token. So
    ``decode(ids, skip_special_tokens=True)`` equals our :meth:`Tokenizer.decode` but for unk, which it drops as
    Llama's tokenizers do where ours writes SentencePiece's " \u2047 "; without it every special piece is written
    as spelled. Text that spells a special piece is encoded as ours does (``split_special_tokens``).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(tokenizer.model_path).read_bytes())
    splits = []
    if proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM:
        backend = SpmConverter.build_tokenizer_from_spm_proto(proto, spm_unigram_vocab(proto))
        splits.append(pre_tokenizers.Split(Regex(spm_unknown_char(proto)), behavior="isolated"))
    else:
        vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
        backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, spm_merges(proto))
    if tokenizer.segment_cache_enabled:
        splits.append(pre_tokenizers.Split(Regex("\u2581*[^\u2581]+|\u2581+"), behavior="isolated"))
    if proto.trainer_spec.split_digits:
        splits.append(pre_tokenizers.Digits(individual_digits=True))
    if backend.pre_tokenizer is not None:
        splits.insert(0, backend.pre_tokenizer)
    if splits:
        backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    named = {name: proto.pieces[token_id].piece for name, token_id in
             (("eos_token", tokenizer.eos_id), ("unk_token", tokenizer.unk_id), ("pad_token", tokenizer.pad_id))
             if token_id >= 0}  # SentencePiece's -1: no such piece (its default trainer makes no pad)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, clean_up_tokenization_spaces=False,
        split_special_tokens=True, padding_side="left",  # a causal LM's batches continue from their last token
        bos_token=None, **named,  # training documents start after an eos, never a bos
        extra_special_tokens=[p for p in spm_control_pieces(proto) if p not in named.values()])


def checked_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """:func:`hf_tokenizer`, refused (:class:`HFExportError`) if it encodes one of ``TOKENIZER_PROBES`` otherwise
    than ``tokenizer``: before 5.24 transformers' converter ignores SentencePiece's normaliser settings (a dummy
    prefix, extra-space removal), which a tokenizer not trained by megamythos may use. A warning names the
    ``WHITESPACE_RUNS`` it splits otherwise (a unigram model's ties)."""
    import transformers

    converted = hf_tokenizer(tokenizer, model_max_length)
    for text in TOKENIZER_PROBES:
        if converted(text)["input_ids"] != tokenizer.encode_one(text):
            raise HFExportError(f"transformers {transformers.__version__} converts {tokenizer.model_path} into a "
                                f"tokenizer that encodes {text!r} otherwise than it does; upgrade transformers to "
                                ">= 5.24, or export without --format hf")
    ties = [text for text in WHITESPACE_RUNS if converted(text)["input_ids"] != tokenizer.encode_one(text)]
    if ties:
        logger.warning("the Hugging Face tokenizer splits %d of %d runs of spaces or tabs otherwise than %s (e.g. "
                       "%r: %s, ours %s): its unigram model scores both splits alike, and transformers breaks the "
                       "tie otherwise than SentencePiece; scores through transformers (lm-eval) differ slightly "
                       "where such runs occur. A BPE tokenizer (train_tokenizer.py's default) converts exactly",
                       len(ties), len(WHITESPACE_RUNS), tokenizer.model_path, ties[0],
                       converted(ties[0])["input_ids"], tokenizer.encode_one(ties[0]))
    return converted


def sampling_settings(sampling: SamplingConfig) -> dict[str, bool | float | int]:
    """transformers' generation settings that draw from the distribution ``megamythos.inference.generate`` draws
    from with ``sampling``: ``do_sample`` unless the temperature is 0 (greedy; transformers refuses a temperature
    of 0), ``temperature`` (1 where greedy), ``top_k`` (0: off, where transformers' own default is 50) and
    ``top_p`` (1: off). Both apply temperature, then top-k, then top-p, by the same rules."""
    return {"do_sample": sampling.temperature > 0, "temperature": sampling.temperature or 1.0,
            "top_k": sampling.top_k, "top_p": sampling.top_p}


def export_hf(model: MythosLM, tokenizer: Tokenizer, out_dir: str | Path,
              packed_documents: dict[str, bool] | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face directory ``out_dir``, its config recording the training
    run's ``packed_documents`` flags (None: not known); returns ``out_dir``. The tokenizer is converted and checked
    (:func:`checked_hf_tokenizer`) before anything is written."""
    from megamythos.hf.configuration_megamythos import MegamythosConfig
    from megamythos.hf.modeling_megamythos import MythosForCausalLM

    converted = checked_hf_tokenizer(tokenizer, model.config.max_seq_len)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eos_id, pad_id = (token_id if token_id >= 0 else None for token_id in (tokenizer.eos_id, tokenizer.pad_id))
    config = MegamythosConfig.from_model_config(model.config, auto_map=AUTO_MAP, bos_token_id=None,
                                                eos_token_id=eos_id, pad_token_id=pad_id,
                                                packed_documents=packed_documents)
    wrapped = MythosForCausalLM(config)
    wrapped.model.load_state_dict(model.state_dict())
    wrapped.generation_config.update(**sampling_settings(SamplingConfig()))  # generate()'s defaults: our CLI's
    wrapped.generation_config.eos_token_id = eos_id
    wrapped.generation_config.pad_token_id = pad_id
    if tokenizer.vocab_size < model.config.vocab_size:  # a padded vocabulary: its ids past the tokenizer's decode
        wrapped.generation_config.suppress_tokens = list(range(tokenizer.vocab_size, model.config.vocab_size))
    wrapped.save_pretrained(out)
    for name, text in shipped_sources().items():
        (out / name).write_text(text)
    converted.save_pretrained(out)
    return out
