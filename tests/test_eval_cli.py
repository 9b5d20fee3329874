"""The evaluation and generation command lines on one tiny trained checkpoint (conftest's shared
``tiny_checkpoint``: ZeRO-0, a checkpoint every 2 of 8 iterations): results files and TensorBoard tags, held-out split
reproduction, seeded streaming generation, tokenizer checks, clear errors, and export -> generate without unpickling."""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from megamythos.checkpoint.export import main as export_main
from megamythos.data.manifest import file_sha256
from megamythos.inference.evaluate import EvalConfig, heldout_batches, parse_args
from megamythos.inference.evaluate import main as evaluate_main
from megamythos.inference.generate import TextStreamer, continuation
from megamythos.inference.generate import main as generate_main
from megamythos.inference.loading import load_model
from tests.helpers import (
    REPO,
    launch_env,
    one_error_line,
    synthetic_documents,
    threshold_with_margin,
    tiny_args,
    write_jsonl,
)

ITERS = 8  # conftest.TINY_RUN_ITERS: the shared tiny_checkpoint (ZeRO-0, a checkpoint every 2, last 4 kept)
GEN = ["--prompt", "def main(", "--max-new-tokens", "12"]


def cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command line's ``main``; a refusal by its parser exits (SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.launch
def test_checkpoint_carries_tokenizer_and_run_record(tiny_checkpoint):
    ckpt, corpus = tiny_checkpoint
    tag = ckpt / "iter_0000008"
    record = json.loads((tag / "tokenizer.json").read_text())
    dataset = json.loads(next(corpus.glob("*_text_document.json")).read_text())
    assert record["tokenizer_fingerprint"] == dataset["tokenizer_fingerprint"] and record["vocab_size"] == 384
    assert (tag / "tokenizer.model").read_bytes() == next(corpus.glob("*_tokenizer.model")).read_bytes()
    train = json.loads((tag / "train_args.json").read_text())
    assert train["args"]["split"] == "90,10,0" and train["total_iters"] == ITERS and train["global_batch_size"] == 2


@pytest.mark.launch
def test_evaluate_cli_files_tensorboard_and_loss_falls_with_training(tiny_checkpoint, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ckpt, _ = tiny_checkpoint
    args = ["--loops", "1,3,6", "--eval-iters", "2", "--micro-batch-size", "2", "--exit-threshold", "1e9"]
    code, out, err = cli(evaluate_main, ["--load", str(ckpt / "iter_0000002"), "--out", str(tmp_path), *args], capsys)
    assert code == 0, err
    early = json.loads(out)
    code, out, err = cli(evaluate_main, ["--load", str(ckpt), *args], capsys)  # `latest`, default output dir
    assert code == 0, err
    late = json.loads(out)
    assert "depth eval" in err  # the tqdm bar on stderr
    rows = {(r["loops"], r["exit_threshold"]): r for r in late["results"]}
    assert sorted(rows) == [(1, 0), (1, 1e9), (3, 0), (3, 1e9), (6, 0), (6, 1e9)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in late["results"])
    assert rows[(3, 0)]["loss"] < [r["loss"] for r in early["results"] if r["loops"] == 3][0] - 0.05
    assert rows[(6, 0)]["mean_depth"] == 6 and rows[(6, 1e9)]["mean_depth"] == 1  # any change is below 1e9
    assert rows[(6, 1e9)]["exit_share"] == [1.0] + [0.0] * 5
    assert rows[(6, 1e9)]["forward_flops_per_token"] < rows[(6, 0)]["forward_flops_per_token"]

    out_dir = ckpt / "eval" / "iter_0000008"  # found 2026-12-06: inside the tag, which --keep-last prunes
    assert late["files"]["csv"] == str(out_dir / "depth_eval.csv")
    assert len(list(csv.DictReader((out_dir / "depth_eval.csv").open()))) == 6
    assert json.loads((out_dir / "depth_eval.json").read_text())["trained_loops"] == 3
    assert (out_dir / "depth_eval.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"depth-eval/loss", "depth-eval/ppl", "depth-eval/mean-depth", "depth-eval-exit-1e+09/ppl",
            "depth-eval-exit-1e+09/exit-share/loop-01"} <= tags
    assert [e.step for e in events.Scalars("depth-eval/ppl")] == [1, 3, 6]

    # evaluating it again replaces the default directory's event files; a --tensorboard-dir's are never removed
    user_tb = tmp_path / "user_tb"
    user_tb.mkdir()
    (user_tb / "events.out.tfevents.user").write_bytes(b"")
    for where in ([], ["--tensorboard-dir", str(user_tb)]):
        code, _, err = cli(evaluate_main, ["--load", str(ckpt), "--loops", "2", "--eval-iters", "1", *where], capsys)
        assert code == 0, err
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("depth-eval/ppl")] == [2]
    assert (user_tb / "events.out.tfevents.user").is_file()


@pytest.mark.launch
def test_evaluations_into_one_folder_at_once_keep_each_other_s_rows(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Two evaluations of one checkpoint at once (other --loops) into its default folder: the one that finished last
    replaced the other's depth_eval files and event files, and each file was written in place, so a reader (or the
    other writer) could meet it half-written (found 2026-12-07). They take turns under a lock on the folder, each
    adding its rows to those of the same model and held-out data (a loop count evaluated again replaces its row),
    every file written whole; an evaluation of other data (--test-set, other --eval-iters) replaces them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import megamythos.inference.evaluate as evaluate_module

    ckpt, _ = tiny_checkpoint
    load = shutil.copytree(ckpt / "iter_0000006", tmp_path / "run" / "iter_0000006")  # a folder of this test's own
    common = ["--load", str(load), "--eval-iters", "1", "--micro-batch-size", "2", "--exit-threshold", "0"]
    evaluate, meanwhile = evaluate_module.evaluate_loops, []

    def the_other_finishes_first(*args, **kwargs):  # the second evaluation runs to its end during the first's
        if not meanwhile:
            meanwhile.append(None)
            meanwhile[0] = cli(evaluate_main, [*common, "--loops", "2,4"], capsys)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_loops", the_other_finishes_first)
    code, out, err = cli(evaluate_main, [*common, "--loops", "1,2"], capsys)
    assert code == 0 and meanwhile[0][0] == 0, (err, meanwhile)
    out_dir = tmp_path / "run" / "eval" / "iter_0000006"
    record = json.loads((out_dir / "depth_eval.json").read_text())
    assert [r["loops"] for r in record["results"]] == [4, 1, 2]  # the other's 4; its 2 replaced by this one's
    assert [r for r in record["results"] if r["loops"] == 2] == [r for r in json.loads(out)["results"]
                                                                 if r["loops"] == 2]
    assert [int(r["loops"]) for r in csv.DictReader((out_dir / "depth_eval.csv").open())] == [4, 1, 2]
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("depth-eval/ppl")) == [1, 2, 4]
    assert not list(out_dir.glob("*.tmp.*"))

    monkeypatch.setattr(evaluate_module, "evaluate_loops", evaluate)
    code, _, err = cli(evaluate_main, [*common, "--loops", "3", "--eval-iters", "2"], capsys)  # other batches
    assert code == 0, err
    assert [r["loops"] for r in json.loads((out_dir / "depth_eval.json").read_text())["results"]] == [3]


def test_a_moved_run_s_evaluation_keeps_the_rows_of_the_same_model(tmp_path):
    """A run folder moved (``mv runs/a runs/b``), copied or reached through a link takes its ``eval/`` folder along;
    an evaluation of other loop counts there replaced the rows it found, since they named the model by its old path
    (found 2026-12-07). The digest of the tag's ``checksums.json`` names the model; the path only without one."""
    from megamythos.inference.evaluate import LoopEval, merged_results, write_results

    def row(loops: int) -> LoopEval:
        return LoopEval(loops, 0.0, 5.0, 148.4, float(loops), [0.0] * (loops - 1) + [1.0], 1e5 * loops, 32)

    evaluated = {"model": "/old/runs/a/iter_0000002", "checksums_sha256": "ab" * 32, "data_path": [], "split": None,
                 "seed": None, "seq_length": None, "test_set": False, "micro_batch_size": 1, "eval_iters": 1}
    write_results([row(1)], tmp_path, trained_loops=3, evaluated=evaluated)
    moved = {**evaluated, "model": "/new/runs/b/iter_0000002"}
    assert [r.loops for r in merged_results([row(2)], tmp_path / "depth_eval.json", moved)] == [1, 2]
    for other in ({**moved, "checksums_sha256": "cd" * 32}, {**moved, "eval_iters": 2}):  # another model, other data
        assert [r.loops for r in merged_results([row(2)], tmp_path / "depth_eval.json", other)] == [2]
    unverified = {**evaluated, "checksums_sha256": None}  # a tag without a manifest: its path is all there is
    write_results([row(1)], tmp_path, trained_loops=3, evaluated=unverified)
    assert [r.loops for r in merged_results([row(2)], tmp_path / "depth_eval.json", {**moved, "checksums_sha256": None})
            ] == [2]
    assert [r.loops for r in merged_results([row(2)], tmp_path / "depth_eval.json", unverified)] == [1, 2]


@pytest.mark.launch
def test_a_run_folder_that_takes_no_results_is_told_to_give_out(tiny_checkpoint, tmp_path, capsys):
    """A run folder on a read-only mount (evaluation nodes mount runs read-only), or with a file where its ``eval/``
    goes: ``evaluate`` without ``--out`` stopped with ``--out RUN/eval/TAG: cannot create ...``, a flag the user had
    not given and no word of what to do (found 2026-12-07). ``--out`` elsewhere evaluates it, writing nothing there."""
    ckpt, _ = tiny_checkpoint
    load = shutil.copytree(ckpt / "iter_0000006", tmp_path / "run" / "iter_0000006")
    (tmp_path / "run" / "eval").write_text("in the way of RUN/eval/TAG, as a read-only folder is")
    common = ["--load", str(load), "--loops", "1", "--eval-iters", "1", "--micro-batch-size", "1",
              "--exit-threshold", "0"]
    code, _, err = cli(evaluate_main, common, capsys)
    line, results = one_error_line(err), tmp_path / "run" / "eval" / "iter_0000006"
    assert code == 2 and line.startswith(f"error: without --out the results go beside the checkpoint, in {results}, "
                                         "which cannot be written ("), err
    assert line.endswith("; a run folder on a read-only mount?): give --out DIR"), line
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    code, _, err = cli(evaluate_main, [*common, "--out", str(tmp_path / "results")], capsys)
    assert code == 0 and (tmp_path / "results" / "depth_eval.json").is_file(), err
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


@pytest.mark.launch
def test_evaluate_logs_each_row_on_a_line_of_its_own(tiny_checkpoint, tmp_path, capsys):
    """Each row's log line (``loops N: loss ...``) was written where the tqdm bar's line ended, so a terminal
    showed it glued to the bar (found 2026-12-07, a new user's first hour): it now goes above the bar."""
    handler = logging.StreamHandler(sys.stderr)  # what run_cli's basicConfig installs outside pytest
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code, _, err = cli(evaluate_main, ["--load", str(tiny_checkpoint[0]), "--loops", "1,2", "--eval-iters", "1",
                                           "--micro-batch-size", "2", "--exit-threshold", "0",
                                           "--out", str(tmp_path)], capsys)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert code == 0, err
    rows = [line for line in re.split(r"[\r\n]", err) if "loops/token" in line]
    assert len(rows) == 2 and all(line.startswith("loops ") for line in rows), rows


@pytest.mark.launch
def test_evaluation_reads_the_validation_batches_the_training_run_used(tiny_checkpoint):
    from megamythos.data.pretraining import DataSources, batches, build_datasets
    from megamythos.training.arguments import parse_args

    ckpt, corpus = tiny_checkpoint
    loaded = load_model(ckpt)
    got = heldout_batches(loaded, EvalConfig(load=str(ckpt), loops=[1], data_path=[], micro_batch_size=2,
                                             eval_iters=1))
    prefix = str(next(corpus.glob("*_text_document.bin")).with_suffix(""))
    _, valid, _ = build_datasets(parse_args(tiny_args(corpus, ITERS)).data_recipe(), DataSources([prefix]), ITERS,
                                 global_batch=2)
    tokens, labels = next(batches(valid, 0, 2, 0, 1))  # what Trainer.evaluate reads first
    assert torch.equal(got[0][0], tokens) and torch.equal(got[0][1], labels)
    assert tokens.shape == (2, 32)  # the run's --seq-length, not the model's max_seq_len


@pytest.mark.launch
def test_evaluation_builds_its_index_cache_where_it_is_told(tiny_checkpoint, tmp_path):
    """``--data-cache-dir`` (the trainer's flag): data on a read-only or shared filesystem can be evaluated; the
    cache elsewhere gives the same batches. Found 2026-12-06: evaluate could only write beside the data."""
    ckpt, corpus = tiny_checkpoint
    loaded = load_model(ckpt)
    cache = tmp_path / "cache"
    cache.mkdir()
    settings = dict(load=str(ckpt), loops=[1], data_path=[], micro_batch_size=2, eval_iters=1)
    moved = heldout_batches(loaded, EvalConfig(**settings, data_cache_dir=str(cache)))
    assert list(cache.glob("*-description.json")), "no index cache in --data-cache-dir"
    beside = heldout_batches(loaded, EvalConfig(**settings))
    assert all(torch.equal(a, b) for a, b in zip(moved[0], beside[0]))
    assert parse_args(["--load", str(ckpt), "--data-cache-dir", str(cache)]).data_cache_dir == str(cache)


@pytest.mark.launch
def test_generate_cli_is_reproducible_per_seed_and_reports_speed(tiny_checkpoint, capsys):
    ckpt, _ = tiny_checkpoint
    runs = [cli(generate_main, ["--load", str(ckpt), *GEN, "--seed", seed], capsys) for seed in ("3", "3", "4")]
    assert all(code == 0 for code, _, _ in runs), runs[0][2]
    (_, first, err), (_, again, _), (_, other, _) = runs
    assert first == again and first != other
    assert first.startswith("def main(") and len(first) > len("def main(\n")
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["new_tokens"] == 12 and stats["tokens_per_s"] > 0 and stats["mean_loops"] == 3


def test_generate_of_a_noise_initialised_model_is_reproducible_per_seed(tiny_tokenizer, tmp_path, capsys):
    """state_init=noise draws each forward's initial state from torch's default generator, which --seed did not
    seed: the same command gave other text at every run, greedy too (found 2026-12-08, config-space sweep)."""
    from megamythos.checkpoint.export import export_model
    from megamythos.model.lm import MythosLM
    from tests.helpers import small_config

    torch.manual_seed(0)
    model = MythosLM(small_config(vocab_size=tiny_tokenizer.vocab_size, state_init="noise", init_std=0.3))
    out = export_model(model, tmp_path / "noise", tiny_tokenizer)
    argv = ["--load", str(out), *GEN, "--temperature", "0", "--seed", "3"]
    runs = [cli(generate_main, argv, capsys) for _ in range(2)]
    assert runs[0][0] == 0, runs[0][2]
    assert runs[0][1] == runs[1][1]


PROMPTS = ["def main(", "class Model(object):\n    def", "import", "return self.value if data else"]


@pytest.mark.launch
@pytest.mark.parametrize("exit_rule", [False, True])
def test_a_prompt_file_generates_each_prompt_as_prompt_alone_does(tiny_checkpoint, tmp_path, capsys, exit_rule):
    """Greedy, in batches of 3 (one mixed batch of 3 lengths, then one of 1), every loop or with the exit rule at a
    threshold about half the prompt tokens pass at loop 2: each JSON line (file order) holds the text and token
    count of that prompt's --prompt run, and the run's loops are the token-weighted loops of those runs. Sampling
    with one seed and batch size gives the same lines again."""
    ckpt, _ = tiny_checkpoint
    loaded = load_model(ckpt)
    tokenizer, depth = loaded.tokenizer, ["--loops", "6", "--exit-threshold", "0"]
    if exit_rule:
        with torch.no_grad():
            changes = [loaded.model(torch.tensor([tokenizer.encode_one(p)]), n_loops=6, exit_threshold=0.0)
                       .stats["relative_change"][1].flatten() for p in PROMPTS]
        depth[-1] = str(threshold_with_margin(torch.cat(changes)))
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    common = ["--load", str(ckpt), "--max-new-tokens", "12", "--temperature", "0", *depth]
    code, out, err = cli(generate_main, [*common, "--prompt-file", str(prompt_file), "--batch-size", "3"], capsys)
    assert code == 0, err
    records, run_stats = [json.loads(line) for line in out.splitlines()], json.loads(err.strip().splitlines()[-1])
    assert [r["prompt"] for r in records] == PROMPTS and [r["line"] for r in records] == [1, 2, 3, 4]
    alone = []
    for record in records:
        code, single, err = cli(generate_main, [*common, "--prompt", record["prompt"]], capsys)
        assert code == 0, err
        alone.append(json.loads(err.strip().splitlines()[-1]))
        assert single == tokenizer.decode(tokenizer.encode_one(record["prompt"])) + record["completion"] + "\n"
        assert record["new_tokens"] == alone[-1]["new_tokens"]
        assert record["stop"] == ("max_tokens" if record["new_tokens"] == 12 else "eos")
    assert run_stats["prompts"] == 4 and run_stats["new_tokens"] == sum(s["new_tokens"] for s in alone)
    assert run_stats["mean_loops"] == pytest.approx(
        sum(s["mean_loops"] * s["new_tokens"] for s in alone) / run_stats["new_tokens"])
    assert (run_stats["mean_loops"] < 6) == exit_rule  # the exit rule stopped tokens early

    sampled = [*common, "--temperature", "1", "--seed", "3", "--prompt-file", str(prompt_file), "--batch-size", "3"]
    first, again = (cli(generate_main, sampled, capsys)[1] for _ in range(2))
    assert first == again and len(first.splitlines()) == 4


def test_text_streamer_holds_back_incomplete_characters():
    pieces = {1: b"a", 2: b"\xc3", 3: b"\xa9"}  # "é" split over two byte tokens

    def decode(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    streamer = TextStreamer(decode, [1])
    assert [streamer.push(2), streamer.push(3), streamer.push(2), streamer.flush()] == ["", "\u00e9", "", "\ufffd"]
    assert streamer.shown == "a\u00e9\ufffd"


def test_text_streamer_after_a_prompt_that_ends_inside_a_character():
    """Found 2026-12-07 (sampling audit): prompt ids ending inside a character (a library caller's, cut at a byte
    token) made the streamer hold the prompt's U+FFFD as shown, so no later text began with it and every push and
    the flush returned "": the whole continuation was lost. The character the new ids complete is now theirs."""
    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    ids = list("h\u00e9llo".encode())  # h, then the two bytes of the e-acute
    streamer = TextStreamer(decode, ids[:2])
    assert [streamer.push(i) for i in ids[2:]] + [streamer.flush()] == ["\u00e9", "l", "l", "o", ""]


def test_the_continuation_of_a_prompt_ending_in_a_replacement_character_leaves_it_to_the_prompt(tiny_tokenizer):
    """A prompt whose text ends in U+FFFD (text that was decoded with errors="replace" once, in a --prompt-file
    line) had that character counted as the completion's too: ``"completion"`` began with it, and was "\ufffd" where
    no token was generated (found 2026-12-07), since the streamer holds a prompt's trailing U+FFFD back as an
    incomplete character. A character the new ids complete is still theirs."""
    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    prompt = list("ab\ufffd".encode())
    assert [continuation(decode, prompt, list(new.encode())) for new in ("", "c")] == ["", "c"]
    assert continuation(decode, list("h\u00e9".encode())[:2], list("\u00e9llo".encode())[1:]) == "\u00e9llo"
    ids = tiny_tokenizer.encode_one("def f(): \ufffd")
    assert tiny_tokenizer.decode(ids).endswith("\ufffd")
    assert [continuation(tiny_tokenizer.decode, ids, new) for new in ([], tiny_tokenizer.encode_one("x"))] == \
        ["", tiny_tokenizer.decode(ids + tiny_tokenizer.encode_one("x"))[len(tiny_tokenizer.decode(ids)):]]


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """A 384-piece tokenizer trained on other text: same vocabulary size, different fingerprint."""
    from megamythos.data.tokenizer import TokenizerTrainConfig, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(synthetic_documents(300, seed=4),
                    TokenizerTrainConfig(vocab_size=384, model_prefix=str(out / "other"), num_threads=1))
    return out / "other.model"


@pytest.mark.launch
def test_tokenizer_mismatch_is_refused_by_both_clis(tiny_checkpoint, other_tokenizer, tmp_path, capsys, caplog):
    ckpt, corpus = tiny_checkpoint
    recorded = json.loads((ckpt / "iter_0000008" / "tokenizer.json").read_text())["tokenizer_fingerprint"]
    evaluate = ["--load", str(ckpt), "--loops", "1", "--eval-iters", "1", "--out", str(tmp_path / "e")]
    for main, argv in ((generate_main, ["--load", str(ckpt), *GEN]), (evaluate_main, evaluate)):
        code, out, err = cli(main, [*argv, "--tokenizer", str(other_tokenizer)], capsys)
        assert code == 2 and recorded in err and "use the tokenizer the model was trained with" in err, err
        assert "Traceback" not in err

    # a dataset whose record names another tokenizer (its copy beside it, as preprocessing with it leaves them)
    prefix = next(corpus.glob("*_text_document.bin")).with_suffix("")
    copy = tmp_path / "data" / prefix.name
    copy.parent.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copy(f"{prefix}{ext}", f"{copy}{ext}")
    shutil.copy(other_tokenizer, f"{copy}.tokenizer.model")
    other = file_sha256(other_tokenizer)
    record = json.loads(Path(f"{prefix}.json").read_text())
    Path(f"{copy}.json").write_text(json.dumps({**record, "tokenizer_model": f"{copy}.tokenizer.model",
                                                "tokenizer_fingerprint": other}))
    code, _, err = cli(evaluate_main, [*evaluate, "--data-path", str(copy)], capsys)
    assert code == 2 and other in err and recorded in err and "tokenised with the model's tokenizer" in err, err

    # without a record (as Megatron writes datasets): accepted with a warning
    Path(f"{copy}.json").unlink()
    code, out, err = cli(evaluate_main, [*evaluate, "--data-path", str(copy)], capsys)
    assert code == 0 and "has no metadata record" in caplog.text, err


@pytest.mark.launch
def test_dataset_without_record_must_fit_the_vocabulary(tiny_checkpoint, tmp_path, capsys):
    import numpy as np

    from megamythos.data.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path / "wide_text_document")  # Megatron-made: no .json record; ids 384-499, past the vocab
    with IndexedDatasetBuilder(prefix, np.int32) as builder:
        for d in range(40):
            builder.add_document(np.arange(d, d + 460) % 116 + 384)
        builder.finalize()
    code, _, err = cli(evaluate_main, ["--load", str(tiny_checkpoint[0]), "--data-path", prefix, "--loops", "1",
                                       "--eval-iters", "1", "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "holds token id" in err and "vocabulary has 384 ids" in err, err


@pytest.mark.launch
def test_a_split_without_a_validation_share_is_one_line(tiny_checkpoint, tmp_path, capsys):
    """Found 2026-12-06: ``TypeError: object of type 'NoneType' has no len()``."""
    code, _, err = cli(evaluate_main, ["--load", str(tiny_checkpoint[0]), "--split", "1,0,0", "--loops", "1",
                                       "--eval-iters", "1", "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "--split 1,0,0 leaves the validation split no sample" in err and "Traceback" not in err, err
    assert "a positive second one" in err, err


@pytest.mark.launch
def test_more_batches_than_the_held_out_split_holds_are_named(tiny_checkpoint, tmp_path, capsys, caplog):
    """Found 2026-12-06: ``--eval-iters 1000`` read the held-out samples 3 times over, said only in an INFO line
    of the index build, and reported the perplexity of the repeats."""
    argv = ["--load", str(tiny_checkpoint[0]), "--loops", "1", "--micro-batch-size", "8", "--out", str(tmp_path / "e")]
    with caplog.at_level(logging.WARNING):
        assert cli(evaluate_main, [*argv, "--eval-iters", "400"], capsys)[0] == 0
    warning = re.search(r"--eval-iters 400 x --micro-batch-size 8 = 3200 samples, but the held-out split holds "
                        r"(\d+) samples of \d+ tokens: some are read more than once; pass --eval-iters (\d+) or "
                        r"fewer", caplog.text)
    assert warning and int(warning[2]) == int(warning[1]) // 8, caplog.text


def test_repeated_loop_counts_and_thresholds_are_evaluated_once():
    """``--loops 2,2`` wrote the same rows twice to the CSV and to TensorBoard."""
    cfg = parse_args(["--load", "x", "--data-path", "d", "--loops", "2,2,1", "--exit-threshold", "0.1,0,0.1"])
    assert cfg.loops == [2, 1] and cfg.exit_thresholds == [0.1, 0.0]


@pytest.mark.parametrize("argv, message", [
    (["--load", "/nonexistent/ckpt"], "/nonexistent/ckpt does not exist"),
    (["--load", "{ckpt}", "--data-path", "/nonexistent/x_text_document"], "/nonexistent/x_text_document.bin"),
    (["--load", "{ckpt}", "--tokenizer", "/nonexistent/tok.model"], "/nonexistent/tok.model"),
    (["--load", "{empty}"], "nor a directory with `latest`"),
])
@pytest.mark.launch
def test_bad_paths_are_one_line_errors(argv, message, tiny_checkpoint, tmp_path, capsys):
    argv = [a.replace("{ckpt}", str(tiny_checkpoint[0])).replace("{empty}", str(tmp_path)) for a in argv]
    for main, extra in ((evaluate_main, ["--out", str(tmp_path / "e")]), (generate_main, GEN)):
        if main is generate_main and "--data-path" in argv:
            continue
        code, _, err = cli(main, [*argv, *extra], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.launch
def test_export_then_generate_never_unpickles(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    ckpt, _ = tiny_checkpoint
    export_dir = tmp_path / "export"
    code, out, err = cli(export_main, [str(ckpt), str(export_dir)], capsys)
    assert code == 0, err
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer.model"} <= {
        p.name for p in export_dir.iterdir()}
    greedy = [*GEN, "--temperature", "0"]
    code, from_checkpoint, err = cli(generate_main, ["--load", str(ckpt), *greedy], capsys)
    assert code == 0, err

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading an export")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    loaded = load_model(export_dir)
    assert loaded.train_record is None and loaded.tokenizer.vocab_size == 384
    code, from_export, err = cli(generate_main, ["--load", str(export_dir), *greedy], capsys)
    assert code == 0, err
    assert from_export == from_checkpoint  # same weights, same greedy text
    (export_dir / "model.safetensors").unlink()
    code, _, err = cli(generate_main, ["--load", str(export_dir), *greedy], capsys)
    assert code == 2 and f"{export_dir / 'model.safetensors'} not found" in err


@pytest.mark.launch
def test_generate_runs_as_a_module(tiny_checkpoint):
    out = subprocess.run([sys.executable, "-m", "megamythos.inference.generate", "--load", str(tiny_checkpoint[0]),
                          *GEN, "--temperature", "0", "--exit-threshold", "1e9"], capture_output=True, text=True,
                         cwd=REPO, env=launch_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("def main(")
    assert json.loads(out.stderr.strip().splitlines()[-1])["mean_loops"] == 1  # every token exits after one loop
    assert "host memory: " in out.stderr  # on CPU the command line keeps freed memory, as the trainer does


@pytest.mark.launch
def test_generate_names_a_corrupt_checkpoint_file(tiny_checkpoint, tmp_path, capsys):
    tag = tmp_path / "iter_0000008"
    shutil.copytree(tiny_checkpoint[0] / "iter_0000008", tag)
    shard = sorted(tag.glob("*model_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk or an interrupted copy
    code, _, err = cli(generate_main, ["--load", str(tag), *GEN], capsys)
    assert code == 2 and f"{shard} is corrupt" in err and "Traceback" not in err


def run_with_a_cache_dir(tmp_path: Path, tokenizer, cache: Path) -> tuple[object, dict]:
    """(a loaded run's stand-in, evaluate's settings) of a run trained on a dataset made in ``tmp_path/data`` with
    ``--data-cache-dir cache``."""
    from types import SimpleNamespace

    from megamythos.data.cli import preprocess_main

    docs = write_jsonl(tmp_path / "docs.jsonl", synthetic_documents(40, seed=3))
    assert preprocess_main(["--input", str(docs), "--output-prefix", str(tmp_path / "data" / "d"), "--tokenizer-model",
                            tokenizer.model_path, "--no-progress"]) == 0
    prefix = str(tmp_path / "data" / "d_text_document")
    loaded = SimpleNamespace(source=tmp_path / "run", tokenizer_record=None, train_record={
        "args": {"data_cache_dir": str(cache), "seq_length": 8, "split": "1,1,0"}, "data_path": [prefix]},
        config=SimpleNamespace(max_seq_len=16, vocab_size=tokenizer.vocab_size))
    return loaded, dict(load=str(tmp_path / "run"), loops=[1], data_path=[], micro_batch_size=2, eval_iters=1,
                        device="cpu")


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only for this process: a read-only bind mount of it as root (whom file modes do not stop),
    else mode 0o555."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode:
        pytest.skip("needs a bind mount")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_recorded_data_cache_dir_missing_here_is_left_for_the_default_beside_the_data(
        tmp_path: Path, tiny_tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    """Found 2026-12-07 (audit): evaluate took the run's recorded ``--data-cache-dir``, a path of the machine the run
    trained on, and created it here (folders at the old machine's path, or a permission error). Where it does not
    exist here, the caches go beside the data, said in one info line; one that exists, or the flag, is used."""
    old = tmp_path / "old-machine" / "cache"
    loaded, settings = run_with_a_cache_dir(tmp_path, tiny_tokenizer, old)
    with caplog.at_level(logging.INFO, logger="megamythos.inference.evaluate"):
        beside = heldout_batches(loaded, EvalConfig(**settings))
    assert not (tmp_path / "old-machine").exists()
    assert list((tmp_path / "data" / "index-cache").glob("*-description.json"))
    assert f"the run's --data-cache-dir {old} does not exist on this machine" in caplog.text
    old.mkdir(parents=True)  # the run's machine (or a copy of its folder there): its cache is used
    assert all(torch.equal(a, b) for a, b in zip(heldout_batches(loaded, EvalConfig(**settings))[0], beside[0]))
    assert list(old.glob("*-description.json"))


def test_a_removed_data_cache_dir_of_data_on_a_read_only_mount_is_made_again(tmp_path: Path, tiny_tokenizer) -> None:
    """Found 2026-12-07 (review): a run given ``--data-cache-dir`` because its data lies on a read-only mount, its
    cache folder since removed (a scratch purge), was evaluated with the caches beside the data, the one place they
    cannot go: ``cannot write the index cache in DATA/index-cache (Read-only file system)``, where evaluate had made
    the folder again. Where a dataset's folder takes no cache, the run's folder is made again."""
    cache = tmp_path / "scratch" / "cache"
    loaded, settings = run_with_a_cache_dir(tmp_path, tiny_tokenizer, cache)
    with read_only(tmp_path / "data"):
        assert heldout_batches(loaded, EvalConfig(**settings))
    assert list(cache.glob("*-description.json")) and not (tmp_path / "data" / "index-cache").exists()
