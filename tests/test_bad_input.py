"""Bad input of issue 22's fault matrix: each case is one ``error: ...`` line naming the file or flag and what to
do, exit code 2 and no traceback (``inspect_dataset.py``: its ``INVALID: ...`` verdict, exit code 1), or, where
the old behaviour was silently wrong, a clear message.

Command lines run in a subprocess; the one trainer case runs the trainer in one process (it is refused before
any sample is read).
"""
from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megamythos.checkpoint.export import ExportError, staged_export
from megamythos.data import indexed_dataset
from megamythos.data.atomic import OutputError
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetError
from megamythos.data.metadata import MetadataError, read_dataset_metadata
from megamythos.data.preprocess import BadInputError, PreprocessConfig, preprocess
from megamythos.data.pretraining import DataError, DataSources, resolve_data
from megamythos.data.sources import InputError, RawRecord, iter_hub_records, parse_record
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError
from megamythos.inference import evaluate as evaluate_module
from megamythos.inference import generate as generate_module
from megamythos.inference import loading
from megamythos.inference.generate import SamplingConfig, generate, new_token_limit
from megamythos.inference.loading import LoadedModel, LoadError
from megamythos.inference.prompt_file import Prompt, plan_batches, read_prompts
from megamythos.model.config import CONFIG_FILE_REMEDY, ConfigError, ModelConfig
from megamythos.model.lm import MythosLM
from megamythos.planning.plan import CONFIG_REMEDY
from megamythos.runtime.device import DeviceError, resolve_device
from megamythos.training.arguments import ArgumentError, differing_flags, parse_args
from megamythos.training.checkpointing import CheckpointError, CheckpointManager
from megamythos.training.launch import LaunchError, preflight, split_launcher_flags
from tests.helpers import (
    REPO,
    corpus_prefix,
    launch_env,
    make_dataset,
    one_error_line,
    run_single,
    small_config,
    synthetic_documents,
    tiny_args,
    write_jsonl,
)


def refusal(args: list[str], cwd: Path, code: int = 2) -> str:
    """Run ``python ARGS``; it must exit with ``code`` without a traceback. Returns its last stderr line."""
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                            env=launch_env())
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def random_tokens_copy(prefix: str, out: Path) -> str:
    """A copy in ``out`` of the dataset ``prefix`` (index, record, tokenizer) whose ``.bin`` is random bytes of
    its size, and whose record holds no checksums (a dataset built before they were recorded: the token-id scan is
    what finds the bytes)."""
    out.mkdir(exist_ok=True)
    copy = str(out / Path(prefix).name)
    for ext in (".idx", ".tokenizer.model"):
        shutil.copy(prefix + ext, copy + ext)
    record = json.loads(Path(prefix + ".json").read_text())
    record.pop("checksums")
    Path(copy + ".json").write_text(json.dumps(record))
    size = Path(prefix + ".bin").stat().st_size
    Path(copy + ".bin").write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return copy


@pytest.fixture
def tiny_dataset(tmp_path: Path, tiny_tokenizer: Tokenizer) -> str:
    """A dataset of 40 synthetic documents tokenised with ``tiny_tokenizer`` (400 ids, uint16)."""
    write_jsonl(tmp_path / "docs.jsonl", synthetic_documents(40, seed=3))
    preprocess(PreprocessConfig(inputs=[str(tmp_path / "docs.jsonl")], output_prefix=str(tmp_path / "tiny"),
                                tokenizer_model=tiny_tokenizer.model_path))
    return str(tmp_path / "tiny_text_document")


# ------------------------------------------------------------------ 1. token ids outside the vocabulary
@pytest.mark.parametrize("chunk", [7, 1 << 24])
def test_token_ids_are_checked_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(indexed_dataset, "TOKEN_SCAN_CHUNK", chunk)
    prefix = make_dataset(tmp_path / "d", num_docs=20, base=0)  # int32, ids 0..19
    IndexedDataset(prefix).check_token_ids(20, "unused")
    with pytest.raises(IndexedDatasetError, match=r"d\.bin holds token id 19 but the vocabulary has 19 ids.*do X"):
        IndexedDataset(prefix).check_token_ids(19, "do X")
    tokens = np.memmap(prefix + ".bin", dtype=np.int32, mode="r+")
    tokens[-1] = -1  # the builder refuses negative ids; a corrupt file need not
    tokens.flush()
    with pytest.raises(IndexedDatasetError, match="holds token id -1"):
        IndexedDataset(prefix).check_token_ids(100, "do X")


def test_datasets_of_a_run_are_checked_for_token_ids(tiny_dataset: str, tmp_path: Path) -> None:
    """What the trainer and ``evaluate`` both call before reading a sample."""
    copy = random_tokens_copy(tiny_dataset, tmp_path / "copy")
    resolve_data([tiny_dataset], 400)
    with pytest.raises(IndexedDatasetError, match=re.escape(f"{copy}.bin holds token id ") + ".* has 400 ids"):
        resolve_data([copy], 400)


def test_inspect_dataset_reports_out_of_vocabulary_tokens(tiny_dataset: str, tmp_path: Path) -> None:
    copy = random_tokens_copy(tiny_dataset, tmp_path / "copy")
    line = refusal([str(REPO / "data_prep" / "inspect_dataset.py"), copy], tmp_path, code=1)
    assert line.startswith(f"INVALID: {copy}.bin holds token id") and "preprocess_data.py" in line, line


def test_inspect_of_a_prefix_with_no_files_is_bad_input_not_invalid(tmp_path: Path, capsys) -> None:
    """Found 2026-12-07: a prefix with neither file (a typo, the .bin given) was "INVALID: ...", exit 1, the verdict
    on a broken dataset; it is one line naming the prefix, exit 2, with the prefix meant where it is plain. A
    dataset that lost one of its files is still INVALID, exit 1."""
    from megamythos.data.cli import inspect_main

    line = one_line_exit_2("megamythos.data.cli:inspect_main", [str(tmp_path / "typo")], capsys)
    assert line == f"error: dataset '{tmp_path / 'typo'}' not found: missing {tmp_path / 'typo'}.bin, " \
                   f"{tmp_path / 'typo'}.idx", line
    (tmp_path / "half.bin").write_bytes(b"")
    line = one_line_exit_2("megamythos.data.cli:inspect_main", [str(tmp_path / "half.bin")], capsys)
    assert line.endswith(f"; pass the prefix without .bin/.idx: {tmp_path / 'half'}"), line
    with pytest.raises(SystemExit) as exit_info:
        inspect_main([str(tmp_path / "half")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith(f"INVALID: {tmp_path / 'half'}.idx does not exist")


@pytest.mark.launch
def test_training_refuses_out_of_vocabulary_tokens(corpus: Path, tmp_path: Path) -> None:
    copy = random_tokens_copy(corpus_prefix(corpus), tmp_path / "copy")
    result = run_single([*tiny_args(corpus, 2), "--data-path", copy], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert f"{copy}.bin holds token id" in line and "vocabulary has 384 ids" in line, line


# ------------------------------------------------------------------ 2. optimiser flags out of range
@pytest.mark.parametrize("flag, value", [("--adam-beta1", "2.0"), ("--adam-beta1", "-0.1"), ("--adam-beta2", "1.0"),
                                         ("--adam-beta2", "nan"), ("--adam-eps", "0"), ("--adam-eps", "-1e-8")])
def test_optimizer_flags_out_of_range_are_refused(flag: str, value: str) -> None:
    with pytest.raises(ArgumentError, match=f"^{flag} must"):
        parse_args([f"{flag}={value}"])


def test_a_bad_override_is_said_once_before_the_log_exists(tmp_path: Path) -> None:
    """An override the model refuses stops the trainer before its log is set up: the message comes once, as
    the ``error:`` line (not a second time, bare, from Python's last-resort log handler)."""
    result = subprocess.run([sys.executable, "-m", "megamythos.training.pretrain", "--override",
                             "loop_capacity=1,0.5,1"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env=launch_env())
    assert result.returncode == 2, result.stderr[-3000:]
    assert "non-increasing" in one_error_line(result.stderr)
    assert result.stderr.count("non-increasing") == 1, result.stderr[-3000:]


# ------------------------------------------------------------------ 3. empty or invalid JSON records
BROKEN_JSON = {"empty": "", "invalid": '{"dim": 64,', "not an object": "[1, 2]"}


@pytest.mark.parametrize("case", BROKEN_JSON)
def test_model_config_file_errors_name_the_file(case: str, tmp_path: Path) -> None:
    path = tmp_path / "model_config.json"
    path.write_text(BROKEN_JSON[case])
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))} (is empty|is not valid JSON|holds a JSON list)") \
            as err:
        ModelConfig.from_json(path)
    assert str(err.value).endswith(CONFIG_FILE_REMEDY)  # a checkpoint tag's file: restore it, or another tag
    line = refusal(["-m", "megamythos.planning.plan", "--config", str(path)], tmp_path)
    assert line == f"error: {str(err.value).removesuffix(CONFIG_FILE_REMEDY)}{CONFIG_REMEDY}", line  # one line


def test_a_planned_config_that_is_no_file_is_named_with_the_flag_to_fix(tmp_path: Path) -> None:
    """Found 2026-12-07: ``plan --config DIR`` said "model config file DIR does not exist", and a broken --config
    file was told to "restore it, or use another checkpoint tag", the advice for a checkpoint's own file."""
    for given, what in ((tmp_path, "is not a file"), (tmp_path / "missing.json", "does not exist")):
        line = refusal(["-m", "megamythos.planning.plan", "--config", str(given)], tmp_path)
        assert line == f"error: model config file {given} {what}; {CONFIG_REMEDY}", line


def test_model_config_file_with_a_bad_value_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({"dim": "64"}))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: "):
        ModelConfig.from_json(path)


@pytest.mark.parametrize("case", BROKEN_JSON)
def test_resume_from_a_tag_with_broken_model_config(case: str, tmp_path: Path) -> None:
    (tmp_path / "iter_0000002").mkdir()
    (tmp_path / "latest").write_text("iter_0000002")
    (tmp_path / "iter_0000002" / "model_config.json").write_text(BROKEN_JSON[case])
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / 'iter_0000002' / 'model_config.json'))} "):
        CheckpointManager.load(None, tmp_path, small_config())


@pytest.mark.parametrize("case", BROKEN_JSON)
def test_evaluate_of_a_tag_with_broken_train_args(case: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_model`` (evaluate, generate) reads the tag's train_args.json after its weights."""
    config = small_config()
    monkeypatch.setattr(loading, "load_checkpoint_weights", lambda tag_dir, tmp: (config, None))
    monkeypatch.setattr(loading, "model_from_state", lambda cfg, state, source: MythosLM(cfg))
    config.to_json(tmp_path / "model_config.json")
    (tmp_path / "train_args.json").write_text(BROKEN_JSON[case])
    with pytest.raises(LoadError, match=f"^{re.escape(str(tmp_path / 'train_args.json'))} .*another checkpoint tag"):
        loading.load_model(tmp_path)


def test_empty_dataset_record_is_named(tiny_dataset: str) -> None:
    Path(tiny_dataset + ".json").write_text("")
    with pytest.raises(MetadataError, match=f"^{re.escape(tiny_dataset)}.json is empty; rebuild the dataset"):
        read_dataset_metadata(tiny_dataset)
    Path(tiny_dataset + ".json").write_text("{}")
    with pytest.raises(MetadataError, match="lacks vocab_size, tokenizer_fingerprint, tokenizer_model"):
        resolve_data([tiny_dataset], 400)


# ------------------------------------------------------------------ 4. a .parquet that is not Parquet
def test_random_bytes_parquet_is_one_line(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    bad = tmp_path / "data.parquet"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    line = refusal([str(REPO / "data_prep" / "preprocess_data.py"), "--input", str(bad), "--output-prefix",
                    str(tmp_path / "out"), "--tokenizer-model", tiny_tokenizer.model_path, "--no-progress"], tmp_path)
    assert line.startswith(f"error: {bad} is not a readable Parquet file"), line


# ------------------------------------------------------------------ 5. a vocabulary larger than the text yields
def test_tokenizer_vocab_larger_than_the_text_yields_is_refused(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "small.jsonl", synthetic_documents(50, seed=2))
    line = refusal([str(REPO / "tokenizer" / "train_tokenizer.py"), "--input", str(tmp_path / "small.jsonl"),
                    "--vocab-size", "70000", "--model-prefix", str(tmp_path / "tok"), "--num-threads", "1"], tmp_path)
    assert line.startswith("error: --vocab-size 70000 is more than this text yields: SentencePiece reached "), line
    reached = int(line.split("reached ")[1].split()[0])
    assert 300 <= reached < 70000 and f"pass --vocab-size {reached} or less" in line, line


# ------------------------------------------------------------------ 6. generation past the context
def test_generation_stops_at_the_context() -> None:
    model = MythosLM(small_config(max_seq_len=16)).eval()
    out, stats = generate(model, torch.randint(0, 97, (1, 5)), SamplingConfig(max_new_tokens=100, temperature=0))
    assert out.shape == (1, 16) and len(stats.loops_per_token) == 11
    assert new_token_limit(16, 5, 3) == 3
    with pytest.raises(LoadError, match="--prompt is 17 tokens but the model's context is 16 positions"):
        new_token_limit(16, 17, 1)


def test_a_prompt_that_fills_the_context_is_refused_as_the_hugging_face_export_refuses_it(
        tiny_tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A ``--prompt`` (or ``--prompt-file`` line) of exactly ``max_seq_len`` tokens generated nothing, with a warning,
    where the Hugging Face export's ``generate()`` raised (found 2026-12-07): one rule for both, as transformers
    refuses a prompt that reaches ``max_length``: no room for a new token, refused in one line, exit 2."""
    text = "def main(data, value): return"
    n = len(tiny_tokenizer.encode_one(text))
    loaded = _small_loaded(tiny_tokenizer, tmp_path, max_seq_len=n)
    monkeypatch.setattr(generate_module, "load_model", lambda path, tokenizer, device: loaded)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"def\n{text}\n")
    room = f"is {n} tokens but the model's context is {n} positions (max_seq_len): no room for a new token"
    for argv, line in ((["--prompt", text], f"error: --prompt {room}; shorten the prompt"),
                       (["--prompt-file", str(prompts)], f"error: --prompt-file {prompts} line 2 {room}; shorten "
                                                         "that prompt")):
        assert generate_module.main(["--load", str(tmp_path), *argv, "--max-new-tokens", "4"]) == 2
        assert one_error_line(capsys.readouterr().err) == line


def test_generate_cli_warns_once_when_the_context_cuts_it_short(tiny_tokenizer: Tokenizer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 capsys: pytest.CaptureFixture) -> None:
    model = MythosLM(small_config(vocab_size=tiny_tokenizer.vocab_size, max_seq_len=24)).eval()
    loaded = LoadedModel(model, tiny_tokenizer, {}, tmp_path, None)
    monkeypatch.setattr(generate_module, "load_model", lambda path, tokenizer, device: loaded)
    prompt_tokens = len(tiny_tokenizer.encode_one("def main("))
    with caplog.at_level(logging.WARNING):
        code = generate_module.main(["--load", str(tmp_path), "--prompt", "def main(", "--max-new-tokens", "600",
                                     "--temperature", "0", "--device", "cpu"])
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"--max-new-tokens 600 runs past the model's context of 24 positions (prompt "
                        f"{prompt_tokens} tokens): stopping after {24 - prompt_tokens} new tokens"], warnings
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["prompt_tokens"] + summary["new_tokens"] <= 24


def test_generate_of_no_new_token_reports_no_loops(tiny_tokenizer: Tokenizer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """``--max-new-tokens 0`` reported 0 mean loops and the FLOPs of a 0-loop forward."""
    model = MythosLM(small_config(vocab_size=tiny_tokenizer.vocab_size)).eval()
    monkeypatch.setattr(generate_module, "load_model",
                        lambda path, tokenizer, device: LoadedModel(model, tiny_tokenizer, {}, tmp_path, None))
    assert generate_module.main(["--load", str(tmp_path), "--prompt", "def", "--max-new-tokens", "0"]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["new_tokens"] == 0 and summary["mean_loops"] is None
    assert summary["forward_flops_per_token"] is None


def _small_loaded(tokenizer: Tokenizer, where: Path, **overrides: object) -> LoadedModel:
    torch.manual_seed(0)
    model = MythosLM(small_config(vocab_size=tokenizer.vocab_size, **overrides)).eval()
    return LoadedModel(model, tokenizer, {}, where, None)


LONG_PROMPT = "def main(data, value): return " * 8  # past a 24-position context


@pytest.mark.parametrize("name, text, argv, message", [
    ("p.txt", "", [], "--prompt-file {file} is empty"),
    ("p.txt", "def\n\nclass\n", [], "--prompt-file {file} line 2 is an empty prompt"),
    ("p.jsonl", '{"prompt": "def"}\n{"text": "x"}\n', [], '--prompt-file {file} line 2 has no string "prompt"'),
    ("p.jsonl", '{"prompt": "def"}\n\n', [], "--prompt-file {file} line 2 is not valid JSON"),
    ("p.txt", f"def\n{LONG_PROMPT}\n", [], "--prompt-file {file} line 2 is * tokens but the model's context is 24 "
                                         "positions (max_seq_len)"),
    ("p.txt", "def\n", ["--prompt", "def"], "argument --prompt: not allowed with argument --prompt-file"),
    ("p.txt", "def\n", ["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    ("p.txt", "def\n", ["--out", "{file}"], "--out {file} exists; pass --overwrite to replace it"),
    ("p.txt", "def\n", ["--out", "{dir}"], "--out {dir} is a directory"),
])
def test_prompt_file_refusals_are_one_line_naming_the_file_line_or_flag(
        name: str, text: str, argv: list[str], message: str, tiny_tokenizer: Tokenizer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Each before any generation: an empty file, an empty or unreadable line, a prompt longer than the context
    (its line named), both prompt flags, a batch size below 1, an existing --out without --overwrite."""
    loaded = _small_loaded(tiny_tokenizer, tmp_path, max_seq_len=24)
    monkeypatch.setattr(generate_module, "load_model", lambda path, tokenizer, device: loaded)
    prompts = tmp_path / name
    prompts.write_text(text)
    argv = [a.format(file=prompts, dir=tmp_path) for a in argv]
    line = one_line_exit_2("megamythos.inference.generate:main",
                           ["--load", str(tmp_path), "--prompt-file", str(prompts), *argv], capsys)
    assert all(part in line for part in message.format(file=prompts, dir=tmp_path).split("*")), line
    assert prompts.read_text() == text  # never written over


@pytest.mark.parametrize("flag", [["--out", "o"], ["--overwrite"], ["--batch-size", "4"]])
def test_out_is_only_for_a_prompt_file(flag: list[str], capsys: pytest.CaptureFixture) -> None:
    """--batch-size with --prompt was ignored without a word (found 2026-12-06), where --out was refused."""
    line = one_line_exit_2("megamythos.inference.generate:main", ["--load", "x", "--prompt", "a", *flag], capsys)
    assert "--out, --overwrite and --batch-size are for the results of --prompt-file" in line, line


def test_batches_never_cut_a_prompt_short_of_what_it_gets_alone() -> None:
    assert plan_batches([3, 5, 5, 2], 8, max_seq_len=10, max_new_tokens=4) == [range(0, 4)]  # the context is far
    assert plan_batches([3, 5, 5, 2], 8, max_seq_len=10, max_new_tokens=6) == [range(0, 1), range(1, 3),
                                                                                range(3, 4)]
    assert plan_batches([1] * 5, 2, max_seq_len=10, max_new_tokens=6) == [range(0, 2), range(2, 4), range(4, 5)]


@pytest.mark.parametrize("name, text", [("p.txt", "def\nclass\n"),
                                        ("p.jsonl", '{"prompt": "def"}\n{"prompt": "class"}\n')])
def test_a_prompt_file_with_a_byte_order_mark_reads_as_without_it(name: str, text: str, tmp_path: Path) -> None:
    """A UTF-8 byte-order mark (Windows editors write one) is no part of the first prompt, as the data tools drop
    it: it made the text file's first prompt start with U+FEFF, and the .jsonl file's first line "not valid JSON"."""
    prompts = tmp_path / name
    prompts.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_prompts(prompts) == [Prompt(1, "def"), Prompt(2, "class")]

def test_a_jsonl_prompt_file_is_read_as_json_whatever_the_case_of_its_suffix(tmp_path: Path) -> None:
    """``P.JSONL`` was read as a text file: each prompt the literal JSON line (found 2026-12-06)."""
    prompts = tmp_path / "P.JSONL"
    prompts.write_text('{"prompt": "def"}\n')
    assert read_prompts(prompts) == [Prompt(1, "def")]


def test_a_prompt_file_continues_each_prompt_as_it_would_alone_up_to_the_context(
        tiny_tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Prompts of different lengths in batches of 3, where the 24-position context cuts each short of
    --max-new-tokens at its own length: each record equals that prompt's --prompt run (text, tokens, loops), stops
    at "context", and --out appears only where asked, replaced only with --overwrite."""
    loaded = _small_loaded(tiny_tokenizer, tmp_path, max_seq_len=24)
    monkeypatch.setattr(generate_module, "load_model", lambda path, tokenizer, device: loaded)
    texts = ["def", "class value(self, data):", "import model", "return None if data else"]
    (tmp_path / "prompts.txt").write_text("\n".join(texts) + "\n")
    common = ["--load", str(tmp_path), "--max-new-tokens", "30", "--temperature", "0"]
    alone = []
    for text in texts:
        assert generate_module.main([*common, "--prompt", text]) == 0
        captured = capsys.readouterr()
        alone.append((captured.out, json.loads(captured.err.strip().splitlines()[-1])))
    out = tmp_path / "results.jsonl"
    batched = [*common, "--prompt-file", str(tmp_path / "prompts.txt"), "--batch-size", "3", "--out", str(out)]
    assert generate_module.main(batched) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4] and [r["prompt"] for r in records] == texts
    for record, (stdout, stats) in zip(records, alone):
        prompt_text = tiny_tokenizer.decode(tiny_tokenizer.encode_one(record["prompt"]))
        assert stdout == prompt_text + record["completion"] + "\n"
        assert record["new_tokens"] == stats["new_tokens"] == 24 - stats["prompt_tokens"] < 30
        assert record["stop"] == "context"
    run_stats = json.loads(captured.err.strip().splitlines()[-1])
    assert run_stats["prompts"] == 4 and run_stats["new_tokens"] == sum(s["new_tokens"] for _, s in alone)
    assert run_stats["mean_loops"] == pytest.approx(
        sum(s["mean_loops"] * s["new_tokens"] for _, s in alone) / run_stats["new_tokens"])
    assert run_stats["forward_flops_per_token"] == pytest.approx(
        sum(s["forward_flops_per_token"] * s["new_tokens"] for _, s in alone) / run_stats["new_tokens"])

    before = out.read_text()
    assert generate_module.main([*batched, "--max-new-tokens", "2"]) == 2  # exists: refused, untouched
    assert out.read_text() == before and "pass --overwrite" in capsys.readouterr().err
    assert generate_module.main([*batched, "--max-new-tokens", "2", "--overwrite"]) == 0
    assert [json.loads(line)["stop"] for line in out.read_text().splitlines()] == ["max_tokens"] * 4


# ------------------------------------------------------------------ 7, 8. JSONL records without a text
def test_non_string_value_is_not_a_missing_key() -> None:
    record = RawRecord("a.jsonl", 1, "json", json.dumps({"text": 5}).encode())
    assert parse_record(record, ("text",)).reason == "non-string value of key 'text' (int)"
    assert parse_record(RawRecord("a.jsonl", 2, "json", b'{"body": "x"}'), ("text",)).reason == "missing key 'text'"


@pytest.mark.parametrize("case", ["non-string", "binary", "non-UTF-8", "other key"])
def test_json_keys_hint_only_for_objects_without_the_key(case: str, tmp_path: Path,
                                                          tiny_tokenizer: Tokenizer) -> None:
    data = {"non-string": json.dumps({"text": 5}).encode() + b"\n",
            "binary": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "non-UTF-8": b'{"text": "caf\xe9"}\n',
            "other key": b'{"body": "x"}\n'}[case]
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    line = refusal([str(REPO / "data_prep" / "preprocess_data.py"), "--input", str(path), "--output-prefix",
                    str(tmp_path / "out"), "--tokenizer-model", tiny_tokenizer.model_path, "--no-progress"], tmp_path)
    assert line.startswith(f"error: {path} gave no documents ("), line
    assert ("--json-keys" in line) == (case == "other key"), line
    if case == "non-string":
        assert "1 non-string value of key 'text'" in line and "missing key" not in line, line


def test_broken_train_record_and_latest_pointer_are_one_line(tmp_path: Path) -> None:
    """A resume reads the tag's train_args.json for its layout and the save directory's `latest`: an empty or
    invalid one names the file (a traceback, and an empty `latest` read as the directory itself, before), as does
    a `latest` that is not text."""
    from megamythos.checkpoint.files import read_latest, saved_layout

    tag = tmp_path / "iter_0000002"
    tag.mkdir()
    (tag / "train_args.json").write_text("")
    with pytest.raises(CheckpointError, match=r"train_args\.json is empty"):
        saved_layout(tag)
    (tag / "train_args.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"train_args\.json is not valid JSON"):
        saved_layout(tag)
    (tmp_path / "latest").write_text("")
    with pytest.raises(CheckpointError, match=r"latest holds '', not a checkpoint tag"):
        read_latest(tmp_path)
    (tmp_path / "latest").write_text("iter_0000002\n")
    assert read_latest(tmp_path) == "iter_0000002"
    (tmp_path / "latest").write_text("iter_0000004")  # found 2026-12-06: the tag deleted by hand, no remedy given
    with pytest.raises(CheckpointError, match=r"latest names 'iter_0000004', which does not exist in .* "
                                              r"\(deleted\?\); the newest tag there is iter_0000002: write it into "
                                              r".*latest to use it"):
        read_latest(tmp_path)
    (tmp_path / "latest").write_bytes(b"\xff\xfe")  # found 2026-12-06: a UnicodeDecodeError traceback
    with pytest.raises(CheckpointError, match=r"latest cannot be read \(.*\); write the tag of the checkpoint"):
        read_latest(tmp_path)


def one_tag_run(run: Path, record: dict) -> Path:
    """``run`` holding one tag, ``iter_0000002``, named by ``latest``, with ``record`` as its train record."""
    tag = run / "iter_0000002"
    tag.mkdir(parents=True)
    (tag / "train_args.json").write_text(json.dumps(record))
    (run / "latest").write_text(tag.name)
    return tag


@pytest.mark.parametrize(("record", "said"), [
    ({"layout": "2x1x1", "zero_stage": 3}, "holds the layout '2x1x1', not an object of world_size, tp, ep"),
    ({"layout": {"world_size": 2, "tp": 1}, "zero_stage": 3}, "holds the layout {'world_size': 2, 'tp': 1}, not an"),
    ({"layout": {"world_size": "2", "tp": 1, "ep": 1}, "zero_stage": 3}, "holds the layout {'world_size': '2',"),
    ({"layout": {"world_size": 2, "tp": 1, "ep": 1}, "zero_stage": "3"}, "holds the zero_stage '3', not 0, 1, 2 or 3"),
])
def test_a_resume_on_another_layout_names_a_train_record_whose_layout_is_not_one(record: dict, said: str,
                                                                                  tmp_path: Path) -> None:
    """Found 2026-12-07: a train record whose layout was not an object of three whole numbers (edited by hand,
    damaged) was a traceback (AttributeError, KeyError 'ep') where a resume compared it with its own layout, and
    a stage given as text was "written with ZeRO-3; this run uses ZeRO-3: resume it with --zero 3"."""
    from megamythos.training.checkpointing import universal_tag

    tag = one_tag_run(tmp_path / "run", record)
    with pytest.raises(CheckpointError) as refused:
        universal_tag(tmp_path / "run", {"world_size": 1, "tp": 1, "ep": 1}, 3, 0, ModelConfig())
    assert str(refused.value).startswith(f"{tag / 'train_args.json'} {said}"), refused.value
    assert str(refused.value).endswith("; restore it from a copy of the run, or use another checkpoint tag")


def test_a_universal_conversion_with_a_file_in_its_place_is_one_line(tmp_path: Path) -> None:
    """Found 2026-12-07: a file where a resume on another layout puts its universal conversion
    (``TAG_universal_model``) was a NotADirectoryError traceback once the whole conversion had been written."""
    from megamythos.training.checkpointing import universal_tag

    one_tag_run(tmp_path / "run", {"layout": {"world_size": 2, "tp": 1, "ep": 1}, "zero_stage": 3})
    (tmp_path / "save").mkdir()
    (tmp_path / "save" / "iter_0000002_universal_model").write_text("notes")
    with pytest.raises(CheckpointError, match=r"^\S+/save/iter_0000002_universal_model is in the way of the "
                                              r"universal conversion of iter_0000002 \(a file or a link, not its "
                                              r"folder\); "
                                              r"move it elsewhere \(or delete it\) and run again$"):
        universal_tag(tmp_path / "run", {"world_size": 1, "tp": 1, "ep": 1}, 3, 0, ModelConfig(),
                      into=tmp_path / "save")
    assert (tmp_path / "save" / "iter_0000002_universal_model").read_text() == "notes"


def test_a_link_to_a_folder_in_a_universal_conversion_s_place_is_in_the_way(tmp_path: Path) -> None:
    """Found 2026-12-07 (review): a link to a folder where the conversion goes (``TAG_universal_model`` moved to
    another disk and linked back) that does not verify was handed to ``shutil.rmtree``, which refuses links: the
    resume said ``--save DIR is not writable (None)``. It is in the way like a file or a dangling link, and the
    folder it points at is left alone."""
    from megamythos.training.checkpointing import universal_tag

    one_tag_run(tmp_path / "run", {"layout": {"world_size": 2, "tp": 1, "ep": 1}, "zero_stage": 3})
    (tmp_path / "save").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes").write_text("kept")
    (tmp_path / "save" / "iter_0000002_universal_model").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"iter_0000002_universal_model is in the way of the universal "
                                              r"conversion of iter_0000002 \(a file or a link, not its folder\)"):
        universal_tag(tmp_path / "run", {"world_size": 1, "tp": 1, "ep": 1}, 3, 0, ModelConfig(),
                      into=tmp_path / "save")
    assert (tmp_path / "elsewhere" / "notes").read_text() == "kept"


def test_a_universal_conversion_that_rank_0_cannot_finish_is_one_line_on_every_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07: a dangling link where the conversion goes (``TAG_universal_model`` pointing at purged
    scratch storage) made rank 0 raise NotADirectoryError once the whole conversion was written, and any error of
    rank 0 other than a CheckpointError left the other ranks waiting for its answer (or their traceback when it
    died). Here DeepSpeed's conversion is a stand-in, and a stand-in gather plays rank 1."""
    from megamythos.checkpoint import reader
    from megamythos.training import checkpointing

    one_tag_run(tmp_path / "run", {"layout": {"world_size": 2, "tp": 1, "ep": 1}, "zero_stage": 3})
    monkeypatch.setattr(reader, "convert_to_universal",
                        lambda tag_dir, out, *_: (out / "zero").mkdir(parents=True) or out)
    (tmp_path / "save").mkdir()
    (tmp_path / "save" / "iter_0000002_universal_model").symlink_to(tmp_path / "purged")
    layout = {"world_size": 1, "tp": 1, "ep": 1}
    with pytest.raises(CheckpointError, match=r"iter_0000002_universal_model is in the way .* \(a file or a link"):
        checkpointing.universal_tag(tmp_path / "run", layout, 3, 0, ModelConfig(), into=tmp_path / "save")
    told: list = []
    monkeypatch.setattr(checkpointing, "_from_rank0", lambda value: told.append(value) or value)
    monkeypatch.setattr(checkpointing, "as_param_records", lambda zero: 1 / 0)  # an error nobody words
    (tmp_path / "save" / "iter_0000002_universal_model").unlink()
    with pytest.raises(ZeroDivisionError):
        checkpointing.universal_tag(tmp_path / "run", layout, 3, 0, ModelConfig(), into=tmp_path / "save")
    assert len(told) == 1 and told[0].startswith(f"rank 0 failed to convert {tmp_path / 'run' / 'iter_0000002'} "
                                                 f"into {tmp_path / 'save'}/iter_0000002_universal_model "
                                                 "(ZeroDivisionError: division by zero)"), told


@pytest.mark.parametrize("states", [[1, 2], {"optimizer": None}])
def test_finetune_from_a_model_states_file_that_is_not_deepspeed_s_is_one_line(states: object,
                                                                                tmp_path: Path) -> None:
    """``--finetune --load`` of a tag (saved before checkpoints carried checksums: nothing else vouches for its
    files) whose ``mp_rank_00_model_states.pt`` is a torch file without DeepSpeed's ``module``. Found 2026-12-07:
    a TypeError or KeyError traceback from ``pretrained_state``."""
    from megamythos.training.checkpointing import check_pretrained, pretrained_state

    tag = one_tag_run(tmp_path / "run", {})
    (tag / "model_config.json").write_text(ModelConfig().to_json())
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    check_pretrained(str(tag))
    with pytest.raises(CheckpointError) as refused:
        pretrained_state(str(tag), ModelConfig(), None)
    assert str(refused.value) == (f"{tag / 'mp_rank_00_model_states.pt'} is not a DeepSpeed model-states file (a "
                                  f"{type(states).__name__} without 'module'); point {tmp_path / 'run' / 'latest'} at "
                                  "an earlier tag, or restore the tag from another copy of the checkpoint")


def test_a_plain_deepspeed_run_is_not_advised_to_lose_its_latest(tmp_path: Path) -> None:
    """Found 2026-12-07: a folder of a plain DeepSpeed run (``latest`` naming ``global_stepN``) was refused with
    "remove it to start afresh", which would cost that run its resume point; it is named as DeepSpeed's run, and
    another --save or --load is advised, whichever flag named it."""
    from megamythos.training.checkpointing import check_run_dirs

    (tmp_path / "global_step10").mkdir()
    (tmp_path / "latest").write_text("global_step10\n")
    for save, load in ((str(tmp_path), None), (None, str(tmp_path)), (str(tmp_path), str(tmp_path))):
        with pytest.raises(CheckpointError, match=r"latest holds 'global_step10': .* is a plain DeepSpeed run") as err:
            check_run_dirs(save, load)
        assert "another --save" in str(err.value) and "remove it" not in str(err.value), err.value
    assert (tmp_path / "latest").read_text() == "global_step10\n"


def one_line_exit_2(entry: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the command line ``entry`` ("module:function") on ``argv`` in this process; it must end with exit code
    2 and a single ``error: ...`` line on stderr, which is returned."""
    module, function = entry.split(":")
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(getattr(importlib.import_module(module), function)(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------ 9. a negative exit threshold
@pytest.mark.parametrize("value", ["-0.1", "nan"])  # NaN passed the `< 0` check and meant "never exit"
@pytest.mark.parametrize("entry, argv", [("megamythos.inference.generate:main", ["--prompt", "x"]),
                                         ("megamythos.inference.evaluate:main", [])])
def test_negative_exit_threshold_is_one_line_naming_the_flag(entry: str, argv: list[str], value: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    line = one_line_exit_2(entry, ["--load", "nowhere", *argv, "--exit-threshold", value], capsys)
    assert "--exit-threshold must" in line and ">= 0 (0 = every loop)" in line, line


def test_a_prompt_that_is_not_utf8_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture) -> None:
    """``--prompt $'abc\\xe6'`` (a Latin-1 terminal's bytes, which Python keeps in argv as lone surrogates) was a
    ``TypeError: List elements must be str or bytes`` traceback from SentencePiece once the model had loaded (found
    2026-12-07), where ``--prompt-file`` of the same bytes is one line."""
    line = one_line_exit_2("megamythos.inference.generate:main", ["--load", "nowhere", "--prompt", "ab\u00e9c\udce6"],
                           capsys)
    assert line == "error: argument --prompt: must be UTF-8 text, got byte 0xe6 at byte 5; give it in UTF-8 (a UTF-8 " \
                   "terminal or locale)", line


@pytest.mark.parametrize("entry, argv, flag", [
    ("megamythos.inference.generate:main", ["--prompt", "x", "--temperature", "nan"], "--temperature"),
    ("megamythos.inference.generate:main", ["--prompt", "x", "--seed", str(2**64)], "--seed"),
    # found 2026-12-06: checked only after the model loaded, naming the field (max_new_tokens=-1), not the flag
    ("megamythos.inference.generate:main", ["--prompt", "x", "--max-new-tokens", "-1"], "--max-new-tokens"),
    ("megamythos.inference.generate:main", ["--prompt", "x", "--top-k", "-1"], "--top-k"),
    ("megamythos.inference.generate:main", ["--prompt", "x", "--top-p", "0"], "--top-p"),
    ("megamythos.inference.generate:main", ["--prompt", "x", "--loops", "0"], "--loops"),
    ("megamythos.inference.evaluate:main", ["--seed", "-1"], "--seed"),
    ("megamythos.inference.evaluate:main", ["--seed", str(2**32)], "--seed")])
def test_sampling_numbers_torch_or_numpy_cannot_take_are_one_line(entry: str, argv: list[str], flag: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-06: tracebacks from torch.multinomial, torch.Generator.manual_seed and numpy's seeding."""
    assert f"argument {flag}: must" in one_line_exit_2(entry, ["--load", "nowhere", *argv], capsys)


# ------------------------------------------------------------------ 10. numbers out of range, flags without a layout
A_FILE = str(REPO / "setup.py")  # a --tokenizer-model the parser takes (it checks the file exists, not what it holds)
NUMBER_CASES = [
    ("megamythos.planning.plan:main", ["--gpus", "0"], "argument --gpus: must be >= 1, got 0"),
    ("megamythos.planning.plan:main", ["--seq-length", "-5"], "argument --seq-length: must be >= 1, got -5"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--mfu", "1.5"], "argument --mfu: must lie in (0, 1], got 1.5"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--grad-accum", "0"], "argument --grad-accum: must be >= 1"),
    ("megamythos.planning.plan:main", ["--preset", "1t", "--tp", "8", "--plan"],
     "--tp, --plan: only with a layout; add --gpus N"),
    ("megamythos.planning.plan:main", ["--", "--lr", "1"], "error: trainer flags after --: only with a layout"),
    # found 2026-12-06: infinite rates planned a step of 0 s, a bare --gpu-memory-gb checked nothing, and hpz was
    # taken for any world size (DeepSpeed asserts) or node size (timed on NVLink across nodes)
    ("megamythos.planning.plan:main", ["--gpus", "8", "--plan", "--peak-tflops", "inf"],
     "argument --peak-tflops: must be finite, got inf"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--plan", "--ib-gbs", "inf"],
     "argument --ib-gbs: must be finite"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--gpu-memory-gb"],
     "argument --gpu-memory-gb: expected at least one argument"),
    # found 2026-12-07 (bad-input sweep): an empty path was read as the flag not given (planned without the file,
    # evaluated into the default --out, with the checkpoint's tokenizer), or as the working directory (--load '')
    ("megamythos.planning.plan:main", ["--config", ""],
     "error: argument --config: is empty; give a path, or leave the flag out"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--ds-config="], "error: argument --ds-config: is empty"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--hostfile", ""], "error: argument --hostfile: is empty"),
    ("megamythos.inference.evaluate:main", ["--load", ""], "error: argument --load: is empty"),
    ("megamythos.inference.evaluate:main", ["--load", "x", "--out", ""], "error: argument --out: is empty"),
    ("megamythos.inference.evaluate:main", ["--load", "x", "--tokenizer", ""], "error: argument --tokenizer: is empty"),
    ("megamythos.inference.generate:main", ["--load", "x", "--prompt-file", ""],
     "error: argument --prompt-file: is empty"),
    ("megamythos.inference.generate:main", ["--load", "x", "--prompt", "x", "--tokenizer", ""],
     "error: argument --tokenizer: is empty"),
    ("megamythos.hf.lm_eval_data:main", ["--data-path", "d", "--out", ""], "error: argument --out: is empty"),
    # found 2026-12-07: export read an empty checkpoint path as the working directory
    ("megamythos.checkpoint.export:main", ["", "out"], "error: argument checkpoint: is empty; give a path"),
    ("megamythos.checkpoint.export:main", ["ckpt", ""], "error: argument out: is empty; give a path"),
    # found 2026-12-07: a path flag's ~ that no shell expanded (--load=~/x) named a folder called ~
    ("megamythos.inference.evaluate:main", ["--load=~/runs/x"], "error: argument --load: '~/runs/x' starts with ~"),
    ("megamythos.training.pretrain:main", ["--data-path=~user/d"], "error: argument --data-path: '~user/d' starts"),
    ("megamythos.data.cli:merge_main", ["--input", "a", "--output-prefix=~/o"], "argument --output-prefix: '~/o"),
    ("megamythos.data.cli:train_tokenizer_main", ["--input", "a", "--vocab-size", "400", "--model-prefix=~/t"],
     "error: argument --model-prefix: '~/t' starts with ~"),
    ("megamythos.research.study:main", ["depth", "--wikitext-dir", "", "--runs", "none"],
     "error: argument --wikitext-dir: is empty"),
    ("megamythos.data.cli:inspect_main", ["prefix", "--tokenizer-model", ""], "error: argument --tokenizer-model: is"),
    ("megamythos.data.cli:preprocess_main", ["--input", "x", "--output-prefix", "o", "--tokenizer-model", ""],
     "error: argument --tokenizer-model: is empty"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--hpz", "3"], "world size 8 is not divisible by ZeRO++"),
    ("megamythos.planning.plan:main", ["--gpus", "16", "--hpz", "16", "--plan"],
     "ZeRO++ hpz=16 is larger than --gpus-per-node 8"),
    # found 2026-12-06: DeepSpeed's AutoEP asserts on hpZ and qgZ under ZeRO-3 after the whole start-up
    ("megamythos.planning.plan:main", ["--gpus", "16", "--ep", "2", "--hpz", "8"],
     "ZeRO++ zero_hpz_partition_size=8 with expert parallelism (ep=2) under ZeRO-3"),
    ("megamythos.planning.plan:main", ["--gpus", "16", "--ep", "2", "--qgz"],
     "ZeRO++ zero_quantized_gradients with expert parallelism (ep=2) under ZeRO-3"),
    ("megamythos.data.cli:preprocess_main", ["--input", "x", "--output-prefix", "o", "--tokenizer-model", A_FILE,
                                             "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    ("megamythos.data.cli:preprocess_main", ["--input", "x", "--output-prefix", "o", "--tokenizer-model", A_FILE,
                                             "--log-interval", "x"], "argument --log-interval: 'x' is not an integer"),
    ("megamythos.data.cli:inspect_main", ["prefix", "--samples", "-1"], "argument --samples: must be >= 0, got -1"),
    ("megamythos.data.cli:default_corpus_main", ["--out", "o", "--max-files", "0"], "argument --max-files: must be"),
    # found 2026-12-06: the build started, said vocab_size=0 without the flag, and left its lock behind
    ("megamythos.data.cli:default_corpus_main", ["--out", "o", "--vocab-size", "0"],
     "argument --vocab-size: must be >= 300, got 0"),
    ("megamythos.hf.lm_eval_data:main", ["--data-path", "d", "--max-docs", "0"], "argument --max-docs: must be >= 1"),
    # --runs names no run: a study that accepted the number would stop there instead of training for minutes
    ("megamythos.research.study:main", ["depth", "--steps", "0", "--runs", "none"], "argument --steps: must be >= 1"),
    ("megamythos.research.study:main", ["depth", "--scale", "0", "--runs", "none"],
     "argument --scale: must lie in (0, 64]"),
    # numpy's seed range: a traceback after the corpus was built (found 2026-12-06)
    # found 2026-12-07: an integer flag's bounds printed as 4.29497e+09
    ("megamythos.research.study:main", ["depth", "--seed", "-1", "--runs", "none"],
     "argument --seed: must lie in [0, 4294967295], got -1"),
    # found 2026-12-06: a RuntimeError after 18 s of corpus building (2 PB asked for), and a FileExistsError
    ("megamythos.research.study:main", ["depth", "--scale", "1e9", "--runs", "none"],
     "argument --scale: must lie in (0, 64], got 1e9"),
    ("megamythos.research.study:main", ["depth", "--work-dir", "/dev/null", "--runs", "fixed_depth"],
     "--work-dir /dev/null: cannot create /dev/null"),
    # found 2026-12-06: '1.2.3' was a ValueError traceback, 'nan,1,1' was read as 1,1 and 'x9,1' as 9,1
    ("megamythos.inference.evaluate:main", ["--load", "x", "--split", "1.2.3,1,1"],
     "argument --split: '1.2.3,1,1' is not 1-3 finite non-negative train,valid,test weights"),
    ("megamythos.hf.lm_eval_data:main", ["--data-path", "x", "--split", "nan,1,1"],
     "argument --split: 'nan,1,1' is not"),
    # found 2026-12-07 (bad-input sweep): an empty --exit-threshold evaluated with no threshold, empty --hf-dataset,
    # --hf-config and --hf-split were read as left out and an empty JSON key looked for in every record; a missing
    # tokenizer, --load or --input was named by its value alone (`tokenizer model 'x' does not exist`)
    ("megamythos.inference.evaluate:main", ["--load", "x", "--exit-threshold", ""],
     "error: --exit-threshold lists no threshold: give comma-separated numbers such as 0.1,0.15, or leave the flag"),
    ("megamythos.inference.evaluate:main", ["--load", "x", "--tokenizer", "missing"],
     "error: argument --tokenizer: tokenizer model 'missing' does not exist; train one with"),
    ("megamythos.inference.generate:main", ["--load", "missing", "--prompt", "x"],
     "error: --load missing does not exist; give a checkpoint directory"),
    ("megamythos.data.cli:preprocess_main", ["--output-prefix", "o", "--tokenizer-model", A_FILE, "--hf-dataset", ""],
     "error: argument --hf-dataset: is empty; give a dataset name or directory, or leave the flag out"),
    ("megamythos.data.cli:preprocess_main", ["--output-prefix", "o", "--tokenizer-model", A_FILE, "--hf-config", ""],
     "error: argument --hf-config: is empty"),
    ("megamythos.data.cli:preprocess_main", ["--output-prefix", "o", "--tokenizer-model", A_FILE, "--hf-split", ""],
     "error: argument --hf-split: is empty; give a split name"),
    ("megamythos.data.cli:preprocess_main", ["--output-prefix", "o", "--tokenizer-model", A_FILE, "--json-keys", ""],
     "error: argument --json-keys: is empty; give a JSON key"),
    ("megamythos.data.cli:train_tokenizer_main", ["--input", "missing", "--vocab-size", "300", "--model-prefix", "t"],
     "error: --input 'missing' matches no file or directory"),
    ("megamythos.data.cli:preprocess_main", ["--input", "x", "--output-prefix", "o", "--tokenizer-model", "missing"],
     "error: argument --tokenizer-model: tokenizer model 'missing' does not exist"),
    ("megamythos.data.cli:inspect_main", ["prefix", "--tokenizer-model", "missing"],
     "error: argument --tokenizer-model: tokenizer model 'missing' does not exist"),
    ("megamythos.data.cli:train_tokenizer_main", ["--input", "x", "--vocab-size", "300", "--model-prefix", "t",
                                                  "--json-key", ""], "error: argument --json-key: is empty; give a"),
    ("megamythos.data.cli:train_tokenizer_main", ["--input", "x", "--vocab-size", "300", "--model-prefix", "t",
                                                  "--hf-split", ""], "error: argument --hf-split: is empty"),
    ("megamythos.data.cli:default_corpus_main", ["--out", ""], "error: argument --out: is empty; give a path"),
    ("megamythos.inference.evaluate:main", ["--load", "x", "--data-path", ""], "error: argument --data-path: is empty"),
    ("megamythos.hf.lm_eval_data:main", ["--data-path", ""], "error: argument --data-path: is empty"),
    ("megamythos.hf.lm_eval_data:main", ["--data-path", "missing"],
     "error: --data-path: dataset 'missing' not found: missing missing.bin, missing.idx"),  # was: no metadata record
    ("megamythos.research.study:main", ["depth", "--work-dir", "", "--runs", "none"], "argument --work-dir: is empty"),
    ("megamythos.research.study:main", ["depth", "--out", "", "--runs", "none"], "argument --out: is empty"),
    ("megamythos.data.cli:merge_main", ["--input", "missing", "--output-prefix", "o"],
     "error: --input: dataset 'missing' not found: missing missing.bin, missing.idx"),  # was: missing.idx does not ...
]


@pytest.mark.parametrize("entry, argv, message", NUMBER_CASES, ids=[" ".join(c[1]) for c in NUMBER_CASES])
def test_numbers_out_of_range_are_one_line_naming_the_flag(entry: str, argv: list[str], message: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Before, these ran on with a default in their place (``--gpus 0``, ``--steps 0``: a whole study), a
    negative count (``--seq-length -5``), silently without a layout (``--tp 8 --plan``) or ended in a traceback
    (``--workers 0``, ``--samples -1``). Run in ``tmp_path``: what a command that accepts the number writes
    stays there."""
    monkeypatch.chdir(tmp_path)
    assert message in one_line_exit_2(entry, argv, capsys)


@pytest.mark.parametrize("flag", ["--peak-tflops", "--default-data-max-files"])
def test_trainer_counts_that_must_be_positive(flag: str) -> None:
    """``--peak-tflops -1`` trained on with a negative MFU; ``--default-data-max-files -1`` built a corpus of
    all files but one."""
    with pytest.raises(ArgumentError, match=f"^{flag} must be positive, got -1"):
        parse_args([flag, "-1"])


@pytest.mark.parametrize("argv, message", [(["--mean-loops", "0"], "argument --mean-loops: must be >= 1, got 0"),
                                           (["--backprop-loops=-1"], "argument --backprop-loops: must be >= 0, got -1"),
                                           (["--loop-checkpoint-segment=-1"],
                                            "argument --loop-checkpoint-segment: must be >= 0, got -1")])
def test_loop_flags_out_of_range_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07 (bad-input sweep): the aliases of ``--override`` passed the parser and were refused once the
    model was configured, naming the field (``ModelConfig.mean_loops=0 is invalid``), not the flag given."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("argv", [["--no-checkpoint-loops", "--loop-checkpoint-segment", "2"],
                                  ["--override", "checkpoint_loops=false", "--override", "loop_checkpoint_segment=0"]])
def test_loop_checkpoint_segment_with_checkpointing_off_is_refused(argv: list[str]) -> None:
    """Found 2026-12-08 (feature combinations): ``--loop-checkpoint-segment`` "implies --checkpoint-loops", but beside
    ``--no-checkpoint-loops`` the run checkpointed nothing, the segment kept in its config without a word."""
    with pytest.raises(ArgumentError, match=r"^--loop-checkpoint-segment \d checkpoints runs of loops, which "
                                            r"--no-checkpoint-loops \(checkpoint_loops=false\) turns off"):
        parse_args(argv)
    assert parse_args(["--checkpoint-loops", "--loop-checkpoint-segment", "2"]).model_config().checkpoint_loops


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], r"--seed must lie in \[0, 2\*\*32\), got -1"),
    (["--seed", str(2**32)], r"--seed must lie in \[0, 2\*\*32\)"),
    (["--lr", "inf"], r"--lr must lie in \[0, 10\], got inf"),
    (["--lr", "-1"], r"--lr must lie in \[0, 10\], got -1.0"),
    # found 2026-12-07 (bad-input sweep): 1e30 (a typo of 1e-3) trained, the weights scaled by 1 - lr x wd < 0 or
    # AdamW turned into SGD, and a clip of 1e30 was clipping off without a word
    (["--lr", "1e30"], r"--lr must lie in \[0, 10\], got 1e\+30 \(typical: 3e-4\)"),
    (["--weight-decay", "1e30"], r"--weight-decay must lie in \[0, 1\], got 1e\+30 \(typical: 0.1\)"),
    (["--adam-eps", "1e30"], r"--adam-eps must be a finite number > 0 and < 1, got 1e\+30"),
    (["--clip-grad", "1e30"], r"--clip-grad must be 0 \(off\) or lie in \(0, 1000\], got 1e\+30"),
    (["--clip-grad", "-1"], r"--clip-grad must be 0 \(off\) or lie in \(0, 1000\], got -1.0"),
    # found 2026-12-06: --adam-eps inf trained nothing with exit 0 (m / (sqrt v + inf)), --weight-decay inf diverged
    # with advice on --lr, --distributed-timeout-minutes inf or 1e-12 were tracebacks, --save '' trained and kept
    # nothing (the logs went into the working directory), and --split accepted what it misread
    (["--adam-eps", "inf"], "--adam-eps must be a finite number > 0 and < 1, got inf"),
    (["--weight-decay", "inf"], r"--weight-decay must lie in \[0, 1\], got inf"),
    (["--peak-tflops", "inf"], "--peak-tflops must be finite"),
    (["--distributed-timeout-minutes", "inf"], r"--distributed-timeout-minutes must lie in \[0.1, 525600\]"),
    (["--distributed-timeout-minutes", "1e-12"], r"--distributed-timeout-minutes must lie in \[0.1, 525600\]"),
    # found 2026-12-07 (bad-input sweep): 1e30 passed and was timedelta's OverflowError traceback after the model
    # was built; 1e9 days overflowed torch's store deadline ("timed out after -5833720454947758ms"); --divergence-
    # factor and --spike-factor inf switched the guard off without a word
    (["--distributed-timeout-minutes", "1e30"], r"--distributed-timeout-minutes must lie in \[0.1, 525600\] \(6 s "
                                                r"to a year; DeepSpeed's default is 10\), got 1e\+30"),
    (["--divergence-factor", "inf"], "--divergence-factor must be 0 \\(off\\) or a finite number above 1, got inf"),
    (["--spike-factor", "inf"], "--spike-factor must be 0 \\(off\\) or a finite number above 1, got inf"),
    (["--save", ""], "--save is empty: give a path, or leave the flag out"),
    # found 2026-12-07: no shell expands ~ after `=`, so --save=~/runs/x saved into a folder named ~ of the working
    # directory (and the logs beside it)
    (["--save=~/runs/x"], "^--save '~/runs/x' starts with ~, which no shell expanded .*: give the flag and the path as "
                          r"two words \(--flag ~/x\), or \$HOME/x; ./~ names a folder called ~$"),
    (["--data-cache-dir=~"], "^--data-cache-dir '~' starts with ~"),
    # Megatron reads --eval-iters 0 as "no validation"; here that is --eval-interval 0, which the line now says
    (["--eval-iters", "0"], r"--eval-iters must be >= 1 \(--eval-interval 0 runs no validation\)"),
    (["--ds-config", str(REPO / "ds_configs")], "ds_configs is a directory; give a DeepSpeed JSON file"),
    (["--metrics-file", ""], "--metrics-file is empty: give a path, or leave the flag out"),
    (["--split", "nan,1,1"], "--split 'nan,1,1' is not 1-3 finite non-negative train,valid,test weights"),
    (["--split=-969,30,1"], "--split '-969,30,1' is not 1-3 finite"),
    (["--split", "²,1,1"], "--split '²,1,1' is not 1-3 finite")])
def test_trainer_numbers_numpy_or_the_schedule_cannot_take(argv: list[str], message: str) -> None:
    """Found 2026-12-06: ``--seed -1`` passed the checks and ended in numpy's traceback after start-up; ``--lr inf``
    trained; ``--lr -1`` was blamed on --min-lr."""
    with pytest.raises(ArgumentError, match=message):
        parse_args(argv)


@pytest.mark.parametrize("text, message", [
    ("# not json", "is not valid JSON"), ("[]", "object"),
    ('{"train_micro_batch_size_per_gpu": "four"}', "train_micro_batch_size_per_gpu must be a positive integer"),
    ('{"zero_optimization": 3}', "zero_optimization must be an object"),
    ('{"tensor_parallel": {"autotp_size": "2"}}', "tensor_parallel.autotp_size must be a positive integer"),
    # found 2026-12-07: AttributeError tracebacks, a string stage said "ZeRO stage 2 does not exist", and the
    # trainer dropped a scheduler or an fp16 section without a word (its own schedule, bf16 or fp32)
    ('{"bf16": true}', "bf16 must be an object"), ('{"optimizer": {"params": []}}', "optimizer.params must be an "
                                                                                   "object"),
    ('{"zero_optimization": {"stage": "2"}}', "zero_optimization.stage must be 0, 1, 2 or 3, got '2'"),
    ('{"scheduler": {"type": "WarmupLR"}}', r"the LR schedule is the trainer's .*; remove scheduler from the file"),
    ('{"fp16": {"enabled": true}}', r"never fp16, .*; remove fp16 from the file"),
    ('{"torch_autocast": {"enabled": true, "dtype": "float16"}}', r"not under DeepSpeed's torch_autocast .*; "
                                                                   "remove torch_autocast from the file"),
    # found 2026-12-07: the trainer now writes data_types itself (fp32 gradient sums under bf16 ZeRO-2/3)
    ('{"data_types": {"grad_accum_dtype": "bf16"}}', r"sets data_types.grad_accum_dtype itself .*; remove "
                                                     "data_types from the file"),
    # found 2026-12-07: the trainer now writes communication_data_type itself (fp32 gradient sums across ranks)
    ('{"communication_data_type": "bf16"}', r"sets communication_data_type itself .*; remove "
                                            "communication_data_type from the file"),
    # found 2026-12-07: "false" trained in bf16 (DeepSpeed's pydantic reads it as false, the trainer as true)
    ('{"bf16": {"enabled": "false"}}', "bf16.enabled must be true or false, got 'false'"),
    ('{"expert_parallel": {"enabled": "no", "autoep_size": 2}}', "expert_parallel.enabled must be true or false")])
def test_a_ds_config_the_trainer_cannot_read_is_one_line(text: str, message: str, tmp_path: Path) -> None:
    """Found 2026-12-06: a JSONDecodeError, AttributeError or TypeError traceback from the launcher's preflight."""
    from megamythos.training.ds_config import load_template

    (tmp_path / "ds.json").write_text(text)
    with pytest.raises(ArgumentError, match=message):
        load_template(tmp_path / "ds.json")


def test_a_disabled_fp16_or_torch_autocast_section_is_no_refusal(tmp_path: Path) -> None:
    from megamythos.training.ds_config import load_template

    for off in ('{"fp16": {"enabled": false}}', '{"torch_autocast": {"enabled": false}}'):
        (tmp_path / "ds.json").write_text(off)
        assert load_template(tmp_path / "ds.json") == json.loads(off)


@pytest.mark.parametrize("template, flags, message", [
    ({"gradient_clipping": 0.5}, [], "gradient_clipping 0.5 contradicts --clip-grad 1.0"),
    ({"optimizer": {"params": {"lr": 3e-4}}}, ["--lr", "1e-3"], "optimizer.params.lr 0.0003 contradicts --lr 0.001"),
    ({"optimizer": {"params": {"betas": [0.9, 0.999]}}}, [],
     r"optimizer.params.betas \[0.9, 0.999\] contradicts --adam-beta1 0.9 --adam-beta2 0.95"),
    ({"optimizer": {"params": {"weight_decay": 0.0}}}, [], "optimizer.params.weight_decay 0.0 contradicts "
                                                           "--weight-decay 0.1"),
    ({"optimizer": {"type": "Lamb"}}, [], "optimizer.type 'Lamb' is not AdamW"),
    ({"zero_optimization": {"stage": 2, "overlap_com": True}}, [], "zero_optimization.overlap_com: Extra inputs are "
                                                                   "not permitted")])
def test_a_ds_config_setting_a_flag_s_value_differently_is_refused(template: dict, flags: list[str], message: str,
                                                                   tmp_path: Path) -> None:
    """Found 2026-12-07: the ds_config's gradient clipping, AdamW hyper-parameters and optimizer type were replaced
    by the flags' values (their defaults where not given) without a word: a JSON asking for clipping at 0.5 or
    DeepSpeed's betas (0.9, 0.999) trained with 1.0 and (0.9, 0.95). A mistyped ZeRO option was DeepSpeed's pydantic
    traceback on every rank after start-up."""
    from megamythos.training.ds_config import check_template, check_zero_options

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(template))
    with pytest.raises(ArgumentError, match=f"^--ds-config {re.escape(str(path))}: {message}"):
        check_zero_options(path, template)  # on each rank, where DeepSpeed is imported anyway
        check_template(path, template, parse_args(["--ds-config", str(path), *flags]))
    key, _, value = message.partition(" ")  # the same value given by its flag is no contradiction
    if key == "gradient_clipping":
        check_template(path, template, parse_args(["--ds-config", str(path), "--clip-grad", "0.5"]))
    if key == "optimizer.params.lr":
        check_template(path, template, parse_args(["--ds-config", str(path), "--lr", "3e-4"]))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "ds_configs").glob("*.json")))
def test_shipped_ds_configs_leave_every_optimizer_flag_to_the_command_line(name: str) -> None:
    from megamythos.training.ds_config import check_template, load_template

    path = REPO / "ds_configs" / name
    flags = ["--clip-grad", "0.3", "--lr", "3e-4", "--adam-beta2", "0.999", "--adam-eps", "1e-6", "--weight-decay",
             "0.01"]
    check_template(path, load_template(path), parse_args(["--ds-config", str(path), *flags]))


def test_a_ds_config_whose_batch_sizes_disagree_is_refused(tmp_path: Path) -> None:
    """Found 2026-12-07: a template giving train_batch_size 16 and gradient_accumulation_steps 1 with micro-batch 2
    on 2 ranks trained with accumulation 4 (train_batch_size kept, the accumulation dropped without a word), where
    DeepSpeed refuses such a config."""
    from megamythos.training.ds_config import resolve_layout

    path = tmp_path / "ds.json"
    template = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 16, "gradient_accumulation_steps": 1}
    path.write_text(json.dumps(template))
    with pytest.raises(ArgumentError, match=f"^--ds-config {re.escape(str(path))}: train_batch_size 16 is not "
                                            "micro-batch 2 x gradient_accumulation_steps 1 x data-parallel size 2"):
        resolve_layout(template, parse_args(["--ds-config", str(path)]), 2)
    assert resolve_layout(template, parse_args(["--ds-config", str(path)]), 8).grad_accum == 1  # 2 x 1 x 8: agreed
    given = resolve_layout(template, parse_args(["--ds-config", str(path), "--global-batch-size", "16"]), 2)
    assert given.grad_accum == 4  # the flag replaces both keys


@pytest.mark.parametrize("argv, message", [
    (["--config", "{config}"], "--hostfile with --config: the printed command trains a --preset"),
    (["--hpz", "8", "--ds-config", "{ds}"], "--hpz with --hostfile: the trainer reads ZeRO++ from its ds_config"),
    ([], "--hostfile needs --ds-config"),
    (["--gpus", "12", "--ds-config", "{ds}"], "--gpus 12 is not a multiple of --gpus-per-node 8"),
    # found 2026-12-06: the trainer flags after -- came last in the command, so they trained what the plan never
    # checked (another preset, batch, context or parallel sizes)
    (["--ds-config", "{ds}", "--", "--seq-length", "8192", "--ep=2", "--override", "max_seq_len=9000"],
     "trainer flags after -- (--seq-length, --ep=2, max_seq_len=9000) would change what this plan checked"),
    # found 2026-12-08 (feature combinations): --override's one-word form, and the loop checkpointing fields, passed,
    # and the printed command trained without the checkpointing the memory plan counted (the trainer takes the last
    # --override of a field) or stopped on every node at the conflicting aliases
    (["--ds-config", "{ds}", "--", "--override=checkpoint_dense_blocks=false", "--override", "checkpoint_loops=false",
      "--override", "loop_checkpoint_segment=3"],
     "trainer flags after -- (--override=checkpoint_dense_blocks=false, checkpoint_loops=false, "
     "loop_checkpoint_segment=3) would change what this plan checked"),
    # found 2026-12-06: the trainer now refuses ZeRO-0 with tensor parallelism in bf16, the command's precision
    (["--zero", "0", "--tp", "2", "--ds-config", "{ds}"], "--zero 0 with --tp 2 in bf16: DeepSpeed's ZeRO-0 bf16"),
    # found 2026-12-07: and ZeRO-0 with expert parallelism in bf16
    (["--zero", "0", "--ep", "8", "--ds-config", "{ds}"], "--zero 0 with --ep 8 in bf16: DeepSpeed's ZeRO-0 bf16"),
    # found 2026-12-07: pdsh hands the command's arguments to each node's shell, which ended at the open quote
    (["--ds-config", "{ds}", "--", "--save", "runs/it's"], "\"runs/it's\" would not reach the other nodes as it is"),
])
def test_a_planned_command_that_would_train_something_else_is_refused(argv: list[str], message: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-06: the printed command dropped --hpz/--qwz/--qgz and --config (training --preset tiny), ran
    the CPU template without --ds-config, and started 8 processes for a 12-GPU plan."""
    (tmp_path / "c.json").write_text(json.dumps(ModelConfig().to_dict()))
    argv = [a.format(config=tmp_path / "c.json", ds=REPO / "ds_configs" / "multi-node.json") for a in argv]
    gpus = [] if "--gpus" in argv else ["--gpus", "16"]
    line = one_line_exit_2("megamythos.planning.plan:main", [*gpus, "--hostfile", "h", *argv], capsys)
    assert message in line, line
    # found 2026-12-07: the ZeRO-0 refusal offered --no-bf16, which --hostfile refuses after -- (its command trains
    # in bf16): it offers what the user can do there
    assert "--no-bf16" not in line, line


@pytest.mark.parametrize("layout, trainer_flags, allowed", [
    (["--zero", "0", "--tp", "2"], [], ["--no-bf16"]),
    (["--zero", "0", "--ep", "2"], [], ["--no-bf16"]),
    (["--tp", "2", "--ds-config", str(REPO / "ds_configs" / "single-gpu.json"), "--zero", "0"], [], ["--no-bf16"]),
    (["--ep", "2"], ["--compile", "--no-bf16"], ["--compile"]),
])
def test_the_plan_refuses_the_layouts_the_trainer_refuses_with_its_line(layout: list[str], trainer_flags: list[str],
                                                                        allowed: list[str],
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07: ``plan --gpus N`` refused ZeRO-0 with --tp or --ep > 1 in bf16 only with --hostfile, and
    planned it otherwise, as it planned --compile with --ep > 1 in fp32 (its trainer flags after --): layouts the
    trainer refuses at start-up. The plan now refuses them with the trainer's line (one check shared by both), and
    plans them where the trainer trains them (``allowed``: in fp32, or compiled in bf16)."""
    from megamythos.planning.plan import main as plan_main
    from megamythos.training.ds_config import bf16_enabled, check_layout, load_template, resolve_layout

    trainer = parse_args(["--ds-config", str(REPO / "ds_configs" / "cpu-debug.json"), *layout, *trainer_flags])
    template = load_template(trainer.ds_config)  # the layout's own --ds-config where it gives one
    with pytest.raises(ArgumentError) as refused:
        check_layout(trainer, resolve_layout(template, trainer, 2), trainer.model_config(),
                     bf16_enabled(template, trainer.bf16))
    line = one_line_exit_2("megamythos.planning.plan:main", ["--gpus", "2", *layout, "--", *trainer_flags], capsys)
    assert line == f"error: {refused.value}", line
    assert plan_main(["--gpus", "2", *layout, "--", *allowed]) == 0


@pytest.mark.parametrize("zero", ["1", "2"])
def test_zero1_or_2_with_tensor_and_expert_parallelism_folded_is_refused(zero: str, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07: ``--zero 2 --tp 2 --ep 2`` (and ZeRO-1) trained, clipping by and logging a gradient norm
    without the routed experts of tensor-parallel rank 1 (DeepSpeed's ZeRO-1/2 norm counts a weight AutoTP did not
    shard on TP rank 0 only, while AutoEP gives each TP rank other experts): 1 - 9.86e-7 of the one-process norm at
    step 1 of the tiny test model, where rank 1's expert share predicts 1 - 1.007e-6 and the other layouts agree
    to 2e-7. The trainer's start-up, the launcher's preflight and the planner refuse it with one line; ZeRO-3 and
    ZeRO-0 in fp32 (the trainer's own norm), and ZeRO-1/2 with only one of --tp and --ep, still train. ZeRO-0 in
    bf16 there, refused for its own norm, now names --zero 3 (not ZeRO-1, refused here)."""
    from megamythos.planning.plan import main as plan_main
    from megamythos.training.ds_config import bf16_enabled, check_layout, load_template, resolve_layout
    from megamythos.training.launch import preflight

    def layout_check(argv: list[str]) -> None:
        args = parse_args(argv)
        template = load_template(args.ds_config)
        check_layout(args, resolve_layout(template, args, 2), args.model_config(), bf16_enabled(template, args.bf16))

    folded = ["--zero", zero, "--tp", "2", "--ep", "2"]
    expected = (f"--zero {zero} with --tp 2 and --ep 2: DeepSpeed's ZeRO-1/2 optimizer counts the routed experts' "
                "gradients on tensor-parallel rank 0 only, so gradient clipping and the logged grad norm miss the "
                "experts the other tensor-parallel ranks hold; use --zero 3 (whose checkpoints of this layout resume "
                "only on it and cannot be exported), or train without --tp or without --ep; to go on from a "
                "checkpoint of such a run, --load it with --finetune, --zero 3 and another --save")
    for precision in ([], ["--no-bf16"]):
        with pytest.raises(ArgumentError) as refused:
            layout_check([*folded, *precision])
        assert str(refused.value) == expected
    with pytest.raises(ArgumentError, match=re.escape(expected)):
        preflight([*folded, "--save", str(tmp_path / "run")], world_size=2)
    assert one_line_exit_2("megamythos.planning.plan:main", ["--gpus", "2", *folded], capsys) == f"error: {expected}"
    for allowed in (["--zero", "3", "--tp", "2", "--ep", "2"], ["--zero", "0", "--tp", "2", "--ep", "2", "--no-bf16"],
                    ["--zero", zero, "--tp", "2"], ["--zero", zero, "--ep", "2"]):
        layout_check(allowed)
    assert plan_main(["--gpus", "2", "--zero", "3", "--tp", "2", "--ep", "2"]) == 0
    with pytest.raises(ArgumentError, match=r"^--zero 0 with --tp 2 in bf16: .* use --zero 3, or --no-bf16; to go "
                                            r"on from a checkpoint of such a run, --load it with --finetune, --zero 3"):
        layout_check(["--zero", "0", "--tp", "2", "--ep", "2"])  # ZeRO-0's refusal offers no refused stage


def test_a_hostfile_with_fewer_hosts_than_planned_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-06: deepspeed takes the first --num_nodes hosts of the hostfile, so one listing fewer started
    a smaller world, whose ranks then accumulated more micro-batches for the same global batch, exit 0."""
    hostfile = tmp_path / "hostfile"
    layout = ["--preset", "10b", "--gpus", "32", "--ep", "8", "--ds-config",
              str(REPO / "ds_configs" / "multi-node.json"), "--hostfile", str(hostfile), "--json"]
    hostfile.write_text("# the job's nodes\na slots=8\nb slots=8\n")
    line = one_line_exit_2("megamythos.planning.plan:main", layout, capsys)
    assert "lists 2 host(s) with slots [8, 8], but the plan needs 4 host(s) of 8 slots" in line, line
    hostfile.write_text("a slots=8\nb slots=8\nc slots=8\nd slots=8  # last\n")
    from megamythos.planning.plan import main as plan_main

    assert plan_main(layout) == 0
    capsys.readouterr()
    hostfile.write_text("a b c d\n")
    assert "'a b c d' is not 'HOST slots=N'" in one_line_exit_2("megamythos.planning.plan:main", layout, capsys)


def test_a_planned_command_carries_a_longer_context(capsys: pytest.CaptureFixture) -> None:
    """The plan raised max_seq_len for --seq-length 4096 but its command did not: the trainer refused it."""
    from megamythos.planning.plan import plan

    report = plan(["--preset", "small", "--gpus", "16", "--seq-length", "4096", "--ds-config",
                   str(REPO / "ds_configs" / "multi-node.json"), "--hostfile", "h", "--json"])
    assert "--override max_seq_len=4096" in report["command"]


@pytest.mark.parametrize("zero, message", [
    ({"zero_hpz_partition_size": "x"}, "zero_hpz_partition_size must be a positive integer, got 'x'"),
    ({"zero_hpz_partition_size": None}, "zero_hpz_partition_size must be a positive integer, got None"),
    ({"zero_quantized_weights": "yes"}, "zero_quantized_weights must be true or false")])
def test_malformed_zero_plus_plus_fields_are_one_line(zero: dict, message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-06: ValueError/TypeError tracebacks in the planner and the trainer alike; found 2026-12-07: the
    line named the key but not the file."""
    from megamythos.planning.layout import LayoutError, zeropp_options

    with pytest.raises(LayoutError, match=f"^--ds-config ds.json: zero_optimization.{message}"):
        zeropp_options(zero, "ds.json")
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": zero}))
    line = one_line_exit_2("megamythos.planning.plan:main", ["--gpus", "8", "--ds-config", str(tmp_path / "ds.json")],
                           capsys)
    assert f"--ds-config {tmp_path / 'ds.json'}: zero_optimization.{message}" in line, line


def test_lm_eval_data_that_gives_no_continuation_item_is_refused(tiny_dataset: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """``--max-docs 1`` wrote an empty continuation.jsonl with exit 0, and lm-eval then failed on it with an
    IndexError (found 2026-12-06)."""
    line = one_line_exit_2("megamythos.hf.lm_eval_data:main", ["--data-path", tiny_dataset, "--split", "1,1,0",
                                                               "--max-docs", "1", "--out", str(tmp_path / "t")], capsys)
    assert "gives a continuation item" in line and "raise --max-docs" in line, line
    assert not (tmp_path / "t" / "heldout.jsonl").exists()


def test_finetune_from_the_run_it_saves_into_is_refused(tmp_path: Path) -> None:
    """``--finetune --load RUN --save RUN`` resumed RUN, its old optimizer state and all (found 2026-12-06)."""
    from megamythos.training.checkpointing import run_sources

    for load in (tmp_path, tmp_path / "iter_0000010"):
        with pytest.raises(CheckpointError, match="lies in this run's own --save"):
            run_sources(str(tmp_path), str(load), finetune=True)
    assert run_sources(str(tmp_path / "ft"), str(tmp_path), finetune=True) == (None, str(tmp_path))


def test_preprocess_settings_that_cannot_run_are_user_errors() -> None:
    """A library caller gets the same one-line error class as the command line (a ValueError traceback before)."""
    with pytest.raises(BadInputError, match="partitions=0 is invalid: must be >= 1"):
        PreprocessConfig(inputs=["x"], output_prefix="o", tokenizer_model="t", partitions=0)


@pytest.mark.parametrize("argv, message", [
    ([], "give --input (files, globs or save_to_disk folders) or --hf-dataset NAME, not both and not neither"),
    (["--input", "x", "--hf-dataset", "d"], "give --input (files, globs or save_to_disk folders) or --hf-dataset"),
    (["--hf-dataset", "d", "--partitions", "2"], "--partitions 2 splits --input files; it cannot be used with "
                                                 "--hf-dataset"),
    (["--input", "x", "--json-keys", "text", "text"], "--json-keys text text is invalid: give one or more distinct"),
])
def test_preprocess_flags_that_cannot_go_together_are_named(argv: list[str], message: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-06: the command line's refusals named the library's fields (``inputs``, ``hf_dataset``,
    ``json_keys=('text', 'text')``), not its flags."""
    line = one_line_exit_2("megamythos.data.cli:preprocess_main",
                           [*argv, "--output-prefix", "o", "--tokenizer-model", A_FILE], capsys)
    assert message in line, line


def test_hf_export_without_transformers_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """transformers is the ``hf`` extra, not a dependency: found 2026-12-06, ``--format hf`` without it was a
    ModuleNotFoundError traceback from megamythos/hf/configuration_megamythos.py, after the checkpoint was read."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    line = one_line_exit_2("megamythos.checkpoint.export:main", [str(tmp_path / "run"), str(tmp_path / "hf"),
                                                                 "--format", "hf"], capsys)
    assert "megamythos[hf]" in line and "without --format hf" in line, line
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------ 11. a file where an output goes, unreadable inputs
OUTPUT_CASES = [
    ("megamythos.hf.lm_eval_data:main", ["--data-path", "d", "--out", "afile"], "--out afile: cannot create afile"),
    ("megamythos.data.cli:default_corpus_main", ["--out", "afile"], "--out afile: cannot create afile"),
    ("megamythos.data.cli:merge_main", ["--input", "d", "--output-prefix", "afile/m"],
     "--output-prefix afile/m: cannot create afile"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--ds-config", "afile"], "afile is empty; give --ds-config"),
    ("megamythos.planning.plan:main", ["--gpus", "8", "--ds-config", "missing.json"], "missing.json cannot be read"),
    ("megamythos.research.study:main", ["depth", "--corpus", "wikitext2", "--wikitext-dir", ".", "--runs",
                                        "fixed_depth"], "--wikitext-dir '.' is not a directory holding"),
    # found 2026-12-07 (bad-input sweep): ENAMETOOLONG was an OSError traceback wherever a path is probed
    ("megamythos.planning.plan:main", ["--config", "x" * 300],
     f"error: {'x' * 60}... (300 characters): file name too long; give a shorter path"),
    ("megamythos.inference.evaluate:main", ["--load", "x" * 300], "(300 characters): file name too long"),
]


@pytest.mark.parametrize("entry, argv, message", OUTPUT_CASES, ids=[" ".join(c[1])[:80] for c in OUTPUT_CASES])
def test_a_file_in_the_way_or_a_missing_input_is_one_line(entry: str, argv: list[str], message: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Each was a traceback (FileExistsError, FileNotFoundError, JSONDecodeError, OSError)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    assert message in one_line_exit_2(entry, argv, capsys)


def test_evaluate_checks_its_output_directories_before_evaluating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """``--out`` onto a file failed with a traceback after the whole evaluation had run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(evaluate_module, "load_model", lambda *args: SimpleNamespace(source=tmp_path))
    monkeypatch.setattr(evaluate_module, "heldout_batches", lambda *args: pytest.fail("evaluated first"))
    for flag in ("--out", "--tensorboard-dir"):
        line = one_line_exit_2("megamythos.inference.evaluate:main", ["--load", ".", flag, "afile"], capsys)
        assert f"{flag} afile: cannot create afile" in line


@pytest.mark.parametrize("flags, message", [(["--tensorboard-dir", "afile"], "--tensorboard-dir afile: cannot create"),
                                            (["--metrics-file", "."], "--metrics-file . is a directory"),
                                            (["--metrics-file", "afile/m.jsonl"], "--metrics-file afile/m.jsonl:")])
def test_trainer_outputs_in_the_way_are_refused_before_start_up(flags: list[str], message: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked by the bash launcher's preflight and by rank 0 before DeepSpeed starts (a traceback after it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match=re.escape(message)):
        preflight(["--save", str(tmp_path / "run"), *flags], world_size=1)


def test_a_data_path_given_with_its_extension_gets_the_prefix_named(tiny_dataset: str) -> None:
    with pytest.raises(DataError, match=re.escape(f"pass the prefix without .bin/.idx: {tiny_dataset}")):
        resolve_data([tiny_dataset + ".bin"], 400)


@pytest.mark.launch
@pytest.mark.parametrize("split, flags, message", [
    ("90,0,10", ["--eval-interval", "1"], "--split 90,0,10 leaves no validation documents in"),
    ("0,90,10", [], "--split 0,90,10 leaves no training documents in")])
def test_a_split_without_documents_for_its_use_is_refused_before_the_first_step(
        corpus: Path, tmp_path: Path, split: str, flags: list[str], message: str) -> None:
    """The first validation (or the first step) ended in a TypeError traceback, after the steps before it."""
    result = run_single([*tiny_args(corpus, 2), "--split", split, *flags], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in one_error_line(result.stderr)


@pytest.mark.parametrize("eval_interval", [0, 5])
def test_a_corpus_without_validation_documents_trains_when_no_validation_runs(tmp_path: Path,
                                                                            eval_interval: int) -> None:
    """A one-document corpus (a text file preprocessed without --txt-blank-line-documents) was refused with
    ``none of which fall in the valid split ... change --split`` under ``--eval-interval 0`` too, though such a run
    reads no validation sample (found 2026-12-06); with validations on, the refusal stands."""
    from megamythos.data.gpt_dataset import DataConfigError
    from megamythos.data.indexed_dataset import IndexedDatasetBuilder
    from megamythos.training.pretrain import Trainer

    prefix = str(tmp_path / "one")
    with IndexedDatasetBuilder(prefix, np.uint16) as builder:
        builder.add_document(np.arange(100) % 50)
        builder.finalize()
    args = parse_args(["--data-path", prefix, "--seq-length", "8", "--eval-interval", str(eval_interval),
                       "--data-cache-dir", str(tmp_path / "cache")])
    trainer = SimpleNamespace(args=args, layout=SimpleNamespace(global_batch_size=4), consumed=0, iteration=0,
                              total_iters=10, sources=DataSources([prefix]), rollback_headroom=lambda rollbacks=0: 0,
                              rollbacks=0, rank=0)
    trainer.warn_of_rereads = lambda *held_out: Trainer.warn_of_rereads(trainer, *held_out)
    trainer.train_samples_asked = lambda: Trainer.train_samples_asked(trainer)
    if eval_interval:
        with pytest.raises(DataConfigError, match="has 1 documents, none of which fall in the valid split"):
            Trainer.datasets(trainer)
        return
    train, valid, test = Trainer.datasets(trainer)
    assert valid is None and test is None and len(train) >= 40


def test_device_names_this_machine_lacks_are_one_line(capsys: pytest.CaptureFixture) -> None:
    """``--device cuda`` on a CPU-only torch was an AssertionError traceback (evaluate, generate, study)."""
    for name, message in [("tpu", "--device 'tpu' is not a device name; use cpu or cuda"),
                          ("meta", "--device meta: these command lines run on cpu or cuda"),
                          *([] if torch.cuda.is_available() else [("cuda", "--device cuda: this machine's torch")])]:
        with pytest.raises(DeviceError, match=re.escape(message)):
            resolve_device(name)
    line = one_line_exit_2("megamythos.inference.evaluate:main", ["--load", ".", "--device", "tpu"], capsys)
    assert "--device 'tpu' is not a device name" in line


@pytest.mark.parametrize("kwargs, message", [({"n_loops": 0}, "n_loops=0 must be >= 1"),
                                             ({"n_loops": -2}, "n_loops=-2 must be >= 1"),
                                             ({"n_loops": 2.5}, "n_loops=2.5 must be >= 1, a whole number"),
                                             ({"n_loops": "8"}, "n_loops='8' must be >= 1, a whole number"),
                                             ({"exit_threshold": -0.1}, "exit_threshold=-0.1 must be >= 0"),
                                             ({"backprop_loops": -1}, "backprop_loops=-1 must be >= 0"),
                                             ({"backprop_loops": 1.5}, "backprop_loops=1.5 must be >= 0, a whole")])
def test_model_forward_refuses_a_loop_count_below_1_and_a_negative_threshold(kwargs: dict, message: str) -> None:
    """``n_loops=0`` ran the config's mean_loops and a negative threshold ran as 0, silently (the Hugging Face
    wrapper's ``generate(..., n_loops=0)`` too); ``backprop_loops=-1`` backpropagated through every loop
    (found 2026-12-06). A loop count of 2.5 or "8" (lm-eval's ``--model_args ...,n_loops=2.5``, which
    ``from_pretrained`` sets on the config unchecked) was a TypeError naming no setting (found 2026-12-06), and so
    was ``backprop_loops=1.5`` (found 2026-12-07)."""
    model = MythosLM(small_config()).eval()
    with pytest.raises(ValueError, match=f"^{message}"):
        model(torch.zeros(1, 4, dtype=torch.long), **kwargs)


def test_model_forward_names_input_and_label_shapes_it_cannot_use() -> None:
    """One sequence without its batch dimension was an IndexError (tuple index out of range), and labels of another
    shape than the inputs (the whole [B, S + 1] sample) cross-entropy's batch-size mismatch, naming neither
    (found 2026-12-06)."""
    model = MythosLM(small_config())
    ids = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("input_ids of shape [6] must be [batch, seq] token ids")):
        model(ids[0])
    with pytest.raises(ValueError, match=re.escape("labels of shape [2, 7] must have the shape of input_ids [2, 6]")):
        model(ids, labels=torch.zeros(2, 7, dtype=torch.long))


@pytest.mark.parametrize("n_loops", [0, -3, 2.5])
def test_library_generation_refuses_a_loop_count_below_1(n_loops: int) -> None:
    """``SamplingConfig(n_loops=0)`` generated at the config's mean_loops, silently (found 2026-12-06); the
    command line's ``--loops 0`` was refused by its parser. ``n_loops=2.5`` was a TypeError from the decode cache
    (found 2026-12-06)."""
    with pytest.raises(ValueError, match=f"^n_loops={n_loops} must be >= 1"):
        SamplingConfig(n_loops=n_loops)


@pytest.mark.parametrize("argv, message", [(["--num_gpus", "0"], "--num_gpus 0: give a whole number >= 1"),
                                           (["--num-gpus=abc"], "--num_gpus abc: give a whole number >= 1"),
                                           (["--node_rank", "-1"], "--node_rank -1: give a whole number >= 0"),
                                           (["--master-port", "99999"],
                                            "--master_port 99999: give a whole number from 1 to 65535"),
                                           # found 2026-12-06: each was DeepSpeed's traceback, exit 1
                                           (["--num-nodes", "2"], "--num_nodes 2 needs --hostfile FILE listing the "
                                            "nodes (a line 'HOST slots=N' per node)"),
                                           (["--no-ssh"], "--no_ssh starts this node only: give its --node_rank R "
                                            "(and run the same command on every node)"),
                                           (["--num-gpus", "2", "--num_gpus=3"],
                                            "--num_gpus is given twice; give it once"),
                                           (["--master-addr", ""], "--master_addr is empty: give the first node's "
                                            "address"),
                                           # found 2026-12-07: DeepSpeed's ValueError traceback, exit 1
                                           (["--num-gpus", "2", "--include", "localhost:0"], "--num_gpus and "
                                            "--include both choose the GPUs: give --include or --exclude alone "
                                            "(HOST:GPUS, e.g. localhost:0,1), or --num_gpus/--num_nodes alone"),
                                           # found 2026-12-07 (bad-input sweep): DeepSpeed's ValueError
                                           # tracebacks, exit 1; --include '' trained on every GPU
                                           (["--include", "abc"], "--include abc: host abc is unknown to deepspeed; "
                                            "without --hostfile the one host is localhost"),
                                           (["--include", ""], "--include '': '' is not HOST or HOST:GPU[,GPU ...]; "
                                            "give e.g. localhost:0,1 (nodes joined by @)"),
                                           (["--exclude=localhost:0,"], "--exclude 'localhost:0,': 'localhost:0,' is "
                                            "not HOST or HOST:GPU[,GPU ...]; give e.g. localhost:0,1 (nodes joined "
                                            "by @)"),
                                           (["--hostfile", "/no/such/hostfile"],
                                            "--hostfile /no/such/hostfile does not exist; give DeepSpeed's hostfile "
                                            "(a line 'HOST slots=N' per node), or drop --hostfile to train on this "
                                            "machine")])
def test_launcher_counts_are_checked(argv: list[str], message: str) -> None:
    """``bash launchers/pretrain.sh --num_gpus abc`` was a ValueError traceback; ``--num_gpus 0`` said
    ``world_size=0``, not the flag. Found 2026-12-06: ``--master-port 99999`` was two tracebacks, and a missing
    ``--hostfile`` trained one local process, exit 0 (DeepSpeed's warning hidden by ``--log_level critical``)."""
    with pytest.raises(LaunchError, match=f"^{re.escape(message)}$"):
        split_launcher_flags([*argv, "--train-iters", "2"])


@pytest.mark.parametrize("text, message", [("node1 slot=8\n", "'node1 slot=8' is not 'HOST slots=N'"),
                                           ("a slots=8\na slots=8\n", "host a is listed twice; give each host one "
                                                                        "line"),
                                           ("# no host yet\n\n", "lists no host; give a line 'HOST slots=N' per "
                                                                   "node")])
def test_a_hostfile_deepspeed_cannot_read_is_one_line(text: str, message: str, tmp_path: Path) -> None:
    """Found 2026-12-07: a mistyped, repeated or missing host line reached DeepSpeed's runner, whose ValueError
    traceback (``Hostfile contains a bad entry``) the launcher followed with "deepspeed exited with code 1"."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        split_launcher_flags(["--hostfile", str(hostfile), "--node-rank", "0", "--train-iters", "2"])


def test_visible_gpus_are_not_renumbered_behind_the_user_s_back() -> None:
    """Found 2026-12-07: `CUDA_VISIBLE_DEVICES=2,3 bash launchers/pretrain.sh --num-gpus 2` trained on GPUs 0 and 1:
    DeepSpeed's runner drops the variable where --num_gpus, --include or --exclude is given."""
    from megamythos.training.launch import check_visible_devices

    for flags in (["--num-gpus", "2"], ["--include", "localhost:2,3"]):
        launcher = split_launcher_flags(flags)[0]
        with pytest.raises(LaunchError, match=r"^CUDA_VISIBLE_DEVICES=2,3 with --(num_gpus|include): deepspeed would "
                                              "ignore the variable"):
            check_visible_devices(launcher, {"CUDA_VISIBLE_DEVICES": "2,3"})
        check_visible_devices(launcher, {})
    check_visible_devices({}, {"CUDA_VISIBLE_DEVICES": "2,3"})  # deepspeed then includes localhost:2,3
    # the GPUs deepspeed numbers from 0 are the visible ones: a SLURM allocation's CUDA_VISIBLE_DEVICES=0,1
    check_visible_devices(split_launcher_flags(["--num-gpus", "2"])[0], {"CUDA_VISIBLE_DEVICES": "0,1,5"})
    with pytest.raises(LaunchError, match=r"^CUDA_VISIBLE_DEVICES=0,1 with --num_gpus"):
        check_visible_devices(split_launcher_flags(["--num-gpus", "3"])[0], {"CUDA_VISIBLE_DEVICES": "0,1"})


def test_a_job_on_several_nodes_does_not_take_its_run_folder_or_defaults_from_one_node(tmp_path: Path) -> None:
    """Found 2026-12-06: RUN_DIR set where a multi-node job was launched did not reach the other nodes' ranks
    (DeepSpeed's runner exports a few variable families only), which saved into their own runs/tiny; and the bash
    form on a node without a GPU gave a GPU cluster the CPU debug run's defaults."""
    from megamythos.training.launch import check_run_folder_reaches_every_node, launch

    with pytest.raises(LaunchError, match="^a job on several nodes needs --save DIR, a folder every node sees"):
        check_run_folder_reaches_every_node(["--lr", "1"], {"WORLD_SIZE": "16"}, 8)
    check_run_folder_reaches_every_node(["--save", "d"], {"WORLD_SIZE": "16"}, 8)
    check_run_folder_reaches_every_node([], {"WORLD_SIZE": "16", "RUN_DIR": "d"}, 8)  # exported (.deepspeed_env)
    check_run_folder_reaches_every_node([], {"WORLD_SIZE": "8"}, 8)  # one node
    if torch.cuda.is_available():
        return
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=8\nb slots=8\n")
    with pytest.raises(LaunchError, match="^this node has no GPU, so `bash launchers/pretrain.sh --hostfile"):
        launch(["--hostfile", str(hostfile), "--train-iters", "2"])


def test_evaluate_refuses_sequences_longer_than_the_model_context() -> None:
    """``evaluate --seq-length 100000`` on a 512-position model ran on for minutes (generate already stopped at
    the context)."""
    config = small_config()
    loaded = SimpleNamespace(train_record=None, config=config, source=Path("export"))
    too_long = evaluate_module.parse_args(["--load", "export", "--seq-length", str(config.max_seq_len + 1)])
    with pytest.raises(LoadError, match=f"exceeds the model's context, max_seq_len={config.max_seq_len}; pass at"):
        evaluate_module.heldout_batches(loaded, too_long)


def test_a_folder_datasets_cannot_read_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``preprocess --hf-dataset DIR`` on a folder that is no dataset (here a broken zip) was a BadZipFile
    traceback from inside ``datasets``."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "data.zip").write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=f"^--hf-dataset {re.escape(str(tmp_path))}: datasets.load_dataset cannot"):
        list(iter_hub_records(str(tmp_path), None, "train", streaming=False))


# ------------------------------------------------------------------ 12. an export beside which nothing can be created
def test_an_export_where_no_directory_can_be_created_is_one_line() -> None:
    """/proc passes the parent checks (it exists and is a directory) but takes no new directory: that was a
    FileNotFoundError traceback from the staging directory."""
    with pytest.raises(ExportError, match=r"cannot create /proc/x\.tmp\.\S+\.\d+ beside OUT /proc/x: .*writable"):
        with staged_export(Path("/proc/x"), Path("/nonexistent/ckpt"), overwrite=False):
            pass


def test_a_metrics_file_that_is_no_metrics_log_is_refused_not_rewritten(tmp_path: Path) -> None:
    """Found 2026-12-06: the trainer cut every trailing line that was no record of its iterations from whatever
    file --metrics-file named: a README copy lost 15 KiB, a dataset's record (PREFIX.json) was emptied, and a
    .bin was a UnicodeDecodeError traceback."""
    from megamythos.training.monitor import check_outputs

    cases = {"README.md": (REPO / "README.md").read_bytes(), "data.json": b'{"vocab_size": 400}\n',
             "tokens.bin": bytes(range(256)) * 64, "long.bin": b"x" * (3 << 20)}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OutputError, match=f"--metrics-file .*{re.escape(name)} is not a metrics log"):
            check_outputs(None, str(tmp_path / name))
        assert (tmp_path / name).read_bytes() == content
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"iteration": 1, "lm loss": 5.0}\n{"iteration": 2, "lm lo')  # a killed writer's cut line
    check_outputs(None, str(log))
    check_outputs(None, str(tmp_path / "new.jsonl"))


def test_a_load_path_that_is_a_file_is_named_so(tmp_path: Path) -> None:
    """Found 2026-12-06: ``--load FILE`` was reported as a path that does not exist."""
    from megamythos.training.checkpointing import check_run_dirs

    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a run directory or checkpoint tag; fix the path"):
        check_run_dirs(None, str(tmp_path / "afile"))


# ------------------------------------------------------------------ per-split data paths (Megatron's blend_per_split)
@pytest.mark.parametrize("argv, message", [
    (["--data-path", "A", "--train-data-path", "B"], "^--data-path and --train-data-path both name the data"),
    (["--train-data-path", "A", "--eval-interval", "0", "--split", "969,30,1"],
     "^--split divides --data-path's documents; with --train-data-path each split reads its own data whole"),
    (["--valid-data-path", "V", "--test-data-path", "T"],
     "^--valid-data-path/--test-data-path given without --train-data-path: name the data to train on with it"),
    (["--train-data-path", "A", "--test-data-path", "T", "--eval-interval", "5"],
     r"^--eval-interval 5 validates on --valid-data-path, which is not given: give it, or pass --eval-interval 0"),
    # until 2026-12-07 the flag was followed by the field's name: `--valid-data-path: data_path ['0.5', 'V', 'W']`
    (["--train-data-path", "A", "--valid-data-path", "0.5", "V", "W"], r"^--valid-data-path: '0.5 V W' is invalid"),
])
def test_per_split_data_paths_follow_megatrons_rules(argv: list[str], message: str) -> None:
    """``--train-data-path``/``--valid-data-path``/``--test-data-path`` name each split's data, read whole: not
    beside ``--data-path`` or ``--split``, training data required, validation data where validations run."""
    with pytest.raises(ArgumentError, match=message) as err:
        parse_args(argv)
    assert "\n" not in str(err.value)


def test_per_split_data_paths_are_recorded_and_records_without_them_read_as_before() -> None:
    """The per-split blends go into the run's record (``train_args.json``), which ``evaluate`` and a resume read
    back; a record written before them (``data_path`` alone, ``split`` given) reads as the same data and recipe, so
    an old checkpoint resumes without a data-settings warning."""
    from megamythos.data.pretraining import DataRecipe, recipe_change

    args = parse_args(["--train-data-path", "0.3", "a", "0.7", "b", "--valid-data-path", "v", "--test-data-path",
                       "t", "--eval-interval", "5"])
    sources = args.data_sources()
    assert sources.per_split == [["0.3", "a", "0.7", "b"], ["v"], ["t"]] and sources.prefixes() == ["a", "b", "v", "t"]
    record = {"args": args.to_dict(), **sources.absolute().record()}
    assert record["train_data_path"] == ["0.3", str(Path("a").resolve()), "0.7", str(Path("b").resolve())]
    assert DataSources.from_record(json.loads(json.dumps(record))) == sources.absolute()
    assert DataRecipe.from_record(record["args"]).split == "969,30,1"  # --split not given: recorded as None
    assert parse_args(["--train-data-path", "a", "--eval-interval", "0"]).data_sources().blend("test") == []

    old = {"args": {"split": "969,30,1", "seq_length": 256, "seed": 1234}, "data_path": ["/d/p"]}  # before
    now = parse_args(["--data-path", "/d/p"])
    assert DataSources.from_record(old) == now.data_sources()
    assert recipe_change(old["args"], DataSources.from_record(old), now.data_recipe(), now.data_sources().absolute(),
                         "ckpt") is None
    moved = recipe_change(old["args"], DataSources.from_record(old), args.data_recipe(), sources, "ckpt")
    assert moved == "the data settings differ from ckpt's: data path /d/p -> train: 0.3 a 0.7 b; valid: v; test: t"
    tested_elsewhere = DataSources(per_split=[["0.3", "a", "0.7", "b"], ["v"], ["t2"]])  # the training order stays
    assert recipe_change(args.to_dict(), sources, args.data_recipe(), tested_elsewhere, "ckpt") is None
    retrained = DataSources(per_split=[["a"], ["v"], ["t"]])
    assert recipe_change(args.to_dict(), sources, args.data_recipe(), retrained, "ckpt").endswith("-> train: a; "
                                                                                                  "valid: v; test: t")


def test_evaluate_reads_the_split_a_per_split_run_was_given() -> None:
    """``evaluate --test-set`` on a run that had no ``--test-data-path`` says so and what to pass; ``--split`` on a
    run of per-split data, which has no split to weigh, is refused rather than applied to another data set."""
    config = small_config()
    record = {"args": {"seq_length": 16}, "train_data_path": ["/d/train"], "valid_data_path": ["/d/valid"],
              "test_data_path": []}
    loaded = SimpleNamespace(train_record=record, config=config, source=Path("ckpt"))
    with pytest.raises(LoadError, match=r"^the run of ckpt was given no --test-data-path: pass --data-path PREFIX"):
        evaluate_module.heldout_batches(loaded, evaluate_module.parse_args(["--load", "ckpt", "--test-set"]))
    with pytest.raises(LoadError, match="^--split divides --data-path's documents, but the run of ckpt read each"):
        evaluate_module.heldout_batches(loaded, evaluate_module.parse_args(["--load", "ckpt", "--split", "1,1,1"]))


def test_a_checkpoint_whose_path_starts_with_a_dash_reaches_the_conversion(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (bad-input sweep): ``evaluate --load=-1`` (a run folder named ``-1``) was refused by DeepSpeed's
    ds_to_universal as ``argument --input_folder: expected one argument``: the folder was read as a flag. Now the
    conversion reads the folder (here one without a checkpoint, which it names)."""
    import tempfile

    from megamythos.checkpoint.files import CheckpointError
    from megamythos.checkpoint.reader import convert_to_universal

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the failed conversion's output is kept
    (tmp_path / "-1" / "iter_0000001").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"can't find \*_optim_states.pt files in directory '-1/iter_0000001'"):
        convert_to_universal(Path("-1/iter_0000001"), Path("-1/universal"))


def test_a_failed_universal_conversion_is_one_line_naming_the_file_with_deepspeed_s_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07: a ds_to_universal failure (a tag without checksums whose files DeepSpeed cannot read) was
    one CheckpointError carrying DeepSpeed's whole output, tracebacks and all. Now one line: what failed on which
    tag, its last line, what to do, and the file that keeps the whole output."""
    import tempfile

    from megamythos.checkpoint.files import CheckpointError
    from megamythos.checkpoint.reader import convert_to_universal

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the output is kept
    tag = tmp_path / "run" / "iter_0000001"
    tag.mkdir(parents=True)
    with pytest.raises(CheckpointError) as failed:
        convert_to_universal(tag, tmp_path / "universal")
    message = str(failed.value)
    assert "\n" not in message and message.startswith(
        f"DeepSpeed's ds_to_universal could not convert {tag} (FileNotFoundError: can't find *_optim_states.pt "
        f"files in directory '{tag}'): restore the tag from a copy of the run, or use another checkpoint tag; its "
        f"whole output is in {tmp_path}/ds_to_universal-"), message
    log = Path(message.rpartition(" is in ")[2])
    assert "Traceback (most recent call last)" in log.read_text()


@pytest.mark.parametrize("argv", [["--data-path", ""], ["--train-data-path", "a", ""], ["--valid-data-path="],
                                  ["--test-data-path", ""]])
def test_an_empty_data_path_is_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07 (bad-input sweep): ``--data-path ''`` was looked for as the dataset ``''`` (``dataset ''
    not found: missing .bin, .idx``)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    flag = argv[0].split("=")[0]
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        f"error: argument {flag}: is empty; give a path, or leave the flag out\n")


def test_a_missing_dataset_is_named_with_the_flag_that_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (bad-input sweep): ``--data-path x`` (trainer, its preflight, evaluate) said ``dataset 'x' not
    found: missing x.bin, x.idx``, without the flag; with per-split paths the user could not tell which."""
    from megamythos.training.launch import preflight

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^--data-path: dataset 'missing' not found: missing missing.bin"):
        preflight(["--data-path", "0.5", make_dataset(tmp_path / "d", 3), "0.5", "missing"], 1)
    sources = DataSources(per_split=[[make_dataset(tmp_path / "d", 3)], ["missing"], []])
    with pytest.raises(DataError, match=r"^--valid-data-path: dataset 'missing' not found"):
        sources.check_found()
    assert sources.prefixes() == [str(tmp_path / "d"), "missing"]  # the list alone reads no file


def test_a_blend_weight_that_names_a_dataset_too_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07: ``--data-path 0.5 A`` beside a dataset named ``0.5`` (two datasets meant) read as A weighted
    0.5, and trained on A alone without a word. Such a weight is one line; ``./0.5`` is the dataset."""
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "0.5", 3)
    make_dataset(tmp_path / "A", 3)
    with pytest.raises(DataError, match=r"^--data-path: 0.5 is read as the weight of A, but it names a dataset too; "
                                        r"write ./0.5 where you mean the dataset"):
        DataSources(["0.5", "A"]).check_found()
    for blend in (["./0.5", "A"], ["0.5", "./0.5", "0.5", "A"], ["0.5"]):
        DataSources(blend).check_found()


def simulate_ranks(monkeypatch: pytest.MonkeyPatch, ranks: dict[str, tuple]) -> None:
    """Stand-ins for the collectives of ``pretrain.first_odd_rank`` over simulated ranks: ``{host: (compared,
    shown)}`` (``pretrain.command_seen`` or ``data_seen`` of each), in rank order, read at each call."""
    from megamythos.training import pretrain

    def gather(gathered: list, mine: object) -> None:
        gathered[:] = [(host, pretrain.json_digest(seen[0])) for host, seen in ranks.items()]

    def broadcast(payload: list, src: int) -> None:
        payload[0] = list(ranks.values())[src][1]

    monkeypatch.setattr(pretrain.dist, "all_gather_object", gather)
    monkeypatch.setattr(pretrain.dist, "broadcast_object_list", broadcast)


def test_ranks_started_with_other_trainer_flags_are_refused_naming_the_rank_and_the_flags(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (two "nodes" on one host, each its own `deepspeed --no_ssh --node_rank R` command): nothing
    compared the nodes' commands, so another --seed was refused as an index cache missing on a shared filesystem
    (said by no node; rank 0 blamed a rank that ended), another --global-batch-size hung in the first step, and
    another --save trained to the first checkpoint and failed it. The ranks' flags are compared at start-up (here
    stand-ins for the collectives give rank 1 its own command); the launcher's --local_rank differs on every rank."""
    from megamythos.training import pretrain

    ours = parse_args(["--seed", "7", "--save", "a", "--override", "dim=64", "--local_rank", "0"])
    commands = {"node0": pretrain.command_seen(ours)}
    simulate_ranks(monkeypatch, commands)
    commands["node1"] = pretrain.command_seen(parse_args(["--seed", "7", "--save", "a", "--override", "dim=64",
                                                          "--local_rank", "1"]))
    pretrain.check_same_command(ours, 2)
    commands["node1"] = pretrain.command_seen(parse_args(["--seed", "8", "--save", "b", "--override", "dim=32",
                                                          "--global-batch-size", "4", "--data-path", "0.5", "x", "0.5",
                                                          "y"]))
    with pytest.raises(ArgumentError) as refused:
        pretrain.check_same_command(ours, 2)
    assert str(refused.value) == (
        "rank 1 (host node1) was started with other trainer flags than rank 0 (host node0): --data-path 0.5 x 0.5 y "
        "(rank 0: not given), --global-batch-size 4 "
        "(rank 0: not given), --save b (rank 0: a), --seed 8 (rank 0: 7), --override dim 32 (rank 0: 64); run the "
        "same command, with the same RUN_DIR, on every node")


def test_ranks_that_read_other_data_under_the_same_paths_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (review of the default corpus across nodes): nodes without a shared filesystem read their
    own copies (node-local copies of a corpus; the default corpus, which each such node builds from its own
    Python's standard library), and a stale copy or another build passed every check of its node: each
    data-parallel rank trained on other data, or under another tokenizer, without a word. The ranks gather what
    they read at start-up (here stand-ins for the collectives give rank 1 its own; tests/test_data_distributed.py
    runs them for real)."""
    from megamythos.data.pretraining import DataSetup
    from megamythos.training import pretrain

    shape = {"sequences": 30, "documents": 30, "tokens": 474426}
    ours = DataSetup("/data/tok.model", "ab12", {"/data/a_text_document": shape, "/data/b_text_document": shape})
    setups = {"node0": pretrain.data_seen(ours)}
    simulate_ranks(monkeypatch, setups)
    setups["node1"] = pretrain.data_seen(DataSetup("/local/tok.model", "ab12", {"/local/a_text_document": shape,
                                                                                 "/local/b_text_document": shape}))
    pretrain.check_same_data(ours, 2)  # the same data under other paths
    pretrain.check_same_data(ours, 1)  # no collective alone
    setups["node1"] = pretrain.data_seen(DataSetup("/local/tok.model", "cd34", {
        "/local/a_text_document": shape, "/local/b_text_document": {**shape, "tokens": 470001}}))
    with pytest.raises(DataError) as refused:
        pretrain.check_same_data(ours, 2)
    assert str(refused.value) == (
        "rank 1 (host node1) reads other data than rank 0 (host node0) under the same paths: /data/b_text_document: "
        "tokens 470001 (rank 0: 474426); a tokenizer of sha256 cd34 (rank 0: ab12); give every node the same files "
        "(one shared folder, or copies of one build), e.g. a --data-path every node sees")
    setups["node1"] = pretrain.data_seen(DataSetup(None, None, dict(ours.shapes)))  # .bin and .idx alone, no record
    with pytest.raises(DataError) as refused:
        pretrain.check_same_data(ours, 2)
    assert "under the same paths: a tokenizer of sha256 none (no dataset record) (rank 0: ab12); give" in str(
        refused.value)


def test_the_ranks_compare_a_digest_of_their_data_not_every_ranks_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (review): every rank gathered every rank's path and shape of each dataset, and every rank's
    flags (--data-path whole), for a blend of 3000 datasets 200-300 kB a rank each: about 1 GB onto each rank of
    4096 (on the GPU under NCCL), unpickled 4096 times, at every start. What a rank sends to all is its host and a
    digest, whatever the blend's size."""
    from megamythos.data.pretraining import DataSetup
    from megamythos.training import pretrain

    shapes = {f"/lustre/corpus/shard-{i:05d}_text_document": {"sequences": 1, "documents": 1, "tokens": 9}
              for i in range(3000)}
    sent: list[bytes] = []

    def gather(gathered: list, mine: object) -> None:
        sent.append(pickle.dumps(mine))
        gathered[:] = [mine, mine]

    monkeypatch.setattr(pretrain.dist, "all_gather_object", gather)
    pretrain.check_same_data(DataSetup("/data/tok.model", "ab12", shapes), 2)
    pretrain.check_same_command(parse_args(["--data-path", *[p for prefix in shapes for p in ("1", prefix)]]), 2)
    assert len(sent) == 2 and max(map(len, sent)) < 200


def test_another_ranks_unforeseen_data_failure_is_named_with_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the other ranks say of a rank whose data check failed on an error that is no user error (a node-local
    copy it may not read): its kind and message, the file included, not a repr without it."""
    from megamythos.training import pretrain

    def gather(gathered: list, mine: object) -> None:
        gathered[:] = [mine, mine]

    monkeypatch.setattr(pretrain.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(pretrain.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(pretrain.dist, "all_gather_object", gather)
    denied = PermissionError(13, "Permission denied")
    denied.filename = "/local/corpus.bin"
    assert pretrain.failed_elsewhere(denied)[2] == "PermissionError: [Errno 13] Permission denied: '/local/corpus.bin'"
    assert pretrain.failed_elsewhere(DataError("dataset 'x' not found"))[2] == "dataset 'x' not found"
    assert pretrain.failed_elsewhere(None) is None


def test_nodes_whose_checkouts_lie_elsewhere_agree_on_the_defaults_found_there(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    """Found 2026-12-07 (read): the ds_config and default corpus folder the launcher and trainer default to are
    absolute paths in the checkout, so two nodes running their own checkouts (`--no_ssh --node_rank R`) at other
    paths were refused as started with other flags. They compare relative to the checkout now; a --save or
    --data-path given differently is still refused."""
    from megamythos.training import arguments

    local = parse_args(["--ds-config", str(REPO / "ds_configs" / "multi-node.json"), "--save", "/shared/a"])
    local = local.command_values()
    elsewhere = tmp_path / "megamythos"  # another node's checkout
    shutil.copytree(REPO / "ds_configs", elsewhere / "ds_configs")
    monkeypatch.setattr(arguments, "CHECKOUT_PATHS", {"ds_config": (elsewhere / "ds_configs", "<ds_configs>"),
                                                      "default_data_dir": (elsewhere, "<checkout>")}, raising=False)
    theirs = parse_args(["--ds-config", str(elsewhere / "ds_configs" / "multi-node.json"), "--save", "/shared/a",
                         "--default-data-dir", str(elsewhere / "data" / "default")])
    assert differing_flags(local, theirs.command_values()) == []
    other = parse_args(["--ds-config", str(elsewhere / "ds_configs" / "multi-node.json"), "--save", "/shared/b",
                        "--data-path", "x", "--default-data-dir", str(elsewhere / "data" / "default")])
    assert differing_flags(local, other.command_values()) == [
        "--data-path x (rank 0: not given)", "--save /shared/b (rank 0: /shared/a)"]


def test_nodes_whose_ds_config_of_one_name_differs_in_content_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """Found 2026-12-07 (review): once the nodes' checkouts compare relative to the checkout, a node whose own
    ``ds_configs/multi-node.json`` says another thing (a checkout of another commit, a file edited on one node)
    passed as started with the same flags, and its ranks built another DeepSpeed config than rank 0's (another
    ZeRO stage: a hang). Its content is compared too; a copy that differs only in layout and key order agrees.
    Found 2026-12-07 (read): the refusal then told the user to run the same command, which they had: the line
    names each node's --ds-config file and says its content differs between them (the command's remedy only
    where a flag differs too)."""
    from megamythos.training import arguments, pretrain

    sent = pretrain.command_seen
    ours = parse_args(["--ds-config", str(REPO / "ds_configs" / "multi-node.json")])
    commands = {"node0": sent(ours)}  # in this checkout
    elsewhere = tmp_path / "megamythos"
    shutil.copytree(REPO / "ds_configs", elsewhere / "ds_configs")
    monkeypatch.setattr(arguments, "CHECKOUT_PATHS", {"ds_config": (elsewhere / "ds_configs", "<ds_configs>"),
                                                      "default_data_dir": (elsewhere, "<checkout>")}, raising=False)
    theirs = elsewhere / "ds_configs" / "multi-node.json"
    template = json.loads(theirs.read_text())
    theirs.write_text(json.dumps(dict(reversed(template.items())), indent=4))
    argv = ["--ds-config", str(theirs), "--default-data-dir", str(elsewhere / "data" / "default")]
    commands["node1"] = sent(parse_args(argv))
    simulate_ranks(monkeypatch, commands)
    pretrain.check_same_command(ours, 2)
    theirs.write_text(json.dumps({**template, "zero_optimization": {**template["zero_optimization"], "stage": 1}}))
    commands["node1"] = sent(parse_args(argv))
    digests = [arguments.template_digest(str(path)) for path in (REPO / "ds_configs" / "multi-node.json", theirs)]
    differs = (f"rank 1 (host node1) was started with other trainer flags than rank 0 (host node0): --ds-config "
               f"content {digests[1]} (rank 0: {digests[0]}); the --ds-config file {theirs} (host node1) differs in "
               f"content from {REPO / 'ds_configs' / 'multi-node.json'} (host node0): give every node the same file "
               "(a checkout of the same commit, without local edits)")
    with pytest.raises(ArgumentError) as refused:
        pretrain.check_same_command(ours, 2)
    assert str(refused.value) == differs
    commands["node1"] = sent(parse_args([*argv, "--seed", "8"]))  # and a flag: both remedies
    with pytest.raises(ArgumentError) as refused:
        pretrain.check_same_command(ours, 2)
    assert str(refused.value) == (differs.replace("node0): --ds-config", "node0): --seed 8 (rank 0: 1234), --ds-config")
                                  + "; run the same command, with the same RUN_DIR, on every node")


ACT_ERA_FIELDS = {"act": True, "act_threshold": 0.99}  # ModelConfig's Graves ACT fields, removed on 2026-12-01


def test_a_checkpoint_of_an_older_version_is_said_to_be_one_wherever_it_is_read(tmp_path: Path) -> None:
    """A checkpoint or export written before 2026-12-01 (the ACT era) holds ModelConfig fields this version lacks.
    Found 2026-12-08: evaluate, generate, export and --finetune refused it with ``ModelConfig has no field(s)
    ['act', 'act_threshold']; known fields: [...]``, which does not say why or what to do, and a resume read past
    them into DeepSpeed's load. Each now says that an older version wrote it, and to read it with that checkout."""
    from megamythos.checkpoint.reader import load_checkpoint_weights, load_exported
    from megamythos.training.checkpointing import pretrained_state

    old_config = json.dumps({**json.loads(ModelConfig().to_json()), **ACT_ERA_FIELDS})
    tag = one_tag_run(tmp_path / "run", {})
    (tag / "model_config.json").write_text(old_config)
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(old_config)
    (export / "model.safetensors").write_bytes(b"")

    def told(path: Path) -> str:
        return (f"{path} was written by an older version of megamythos, whose model had the field(s) ['act', "
                "'act_threshold'] (Graves ACT, replaced by per-token early exit on 2026-12-01): this version cannot "
                "read it; read it with the megamythos checkout that wrote it (one from before 2026-12-01)")

    for read, path in ((lambda: CheckpointManager.load(None, tmp_path / "run", ModelConfig()), tag),  # resume
                       (lambda: load_checkpoint_weights(tag, tmp_path / "work"), tag),  # evaluate, generate, export
                       (lambda: pretrained_state(str(tag), ModelConfig(), None), tag),  # --finetune --load
                       (lambda: load_exported(export), export)):  # evaluate/generate/--finetune of an export
        with pytest.raises(CheckpointError) as refused:
            read()
        assert str(refused.value) == told(path / ("config.json" if path == export else "model_config.json"))
    line = refusal(["-m", "megamythos.checkpoint.export", str(tag), str(tmp_path / "out")], tmp_path)
    assert line == f"error: {told(tag / 'model_config.json')}", line
    (tag / "model_config.json").write_text(json.dumps({**json.loads(ModelConfig().to_json()), "halting": 1}))
    with pytest.raises(CheckpointError, match=r"model_config.json was written by another version of megamythos, "
                       r"whose model has the field\(s\) \['halting'\] that this version's lacks: .* read it with the "
                       "megamythos checkout that wrote it$"):
        load_checkpoint_weights(tag, tmp_path / "work")
