"""What a new user meets on the command line: one-line errors with a close match for a mistyped flag on every
CLI, --help that describes every flag and lists the presets, a hint for a dataset prefix without
``_text_document``, one summary line for the default corpus's skipped files, and a finished run that says there
is nothing to do (without torch FutureWarnings)."""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

from megamythos import errors
from megamythos.checkpoint.export import main as export_main
from megamythos.data import default_corpus
from megamythos.data.indexed_dataset import IndexedDatasetBuilder
from megamythos.data.pretraining import DataError, resolve_data
from megamythos.hf.lm_eval_data import main as lm_eval_data_main
from megamythos.inference.evaluate import parse_args as evaluate_args
from megamythos.inference.generate import parse_args as generate_args
from megamythos.model.config import PRESETS
from megamythos.training.arguments import build_parser
from megamythos.training.arguments import parse_args as train_args
from tests.helpers import REPO, console_scripts, launch_env, run_single, tiny_args


@pytest.mark.parametrize("parse, argv, typo, known", [
    (train_args, ["--trian-iters", "5"], "--trian-iters", "--train-iters"),
    (evaluate_args, ["--load", "x", "--loosp", "1"], "--loosp", "--loops"),
    (generate_args, ["--load", "x", "--prompt", "a", "--temprature", "0"], "--temprature", "--temperature"),
    (export_main, ["a", "b", "--fromat", "hf"], "--fromat", "--format"),
    (lm_eval_data_main, ["--data-path", "x", "--max-dcos", "3"], "--max-dcos", "--max-docs"),
])
def test_a_mistyped_flag_is_one_line_with_a_close_match(parse, argv, typo, known, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: unrecognized argument")
    assert f"{typo} (did you mean {known}?)" in err


@pytest.mark.parametrize("parse, argv, prefix, known", [
    (train_args, ["--train-iter", "5"], "--train-iter", "--train-iters"),
    (evaluate_args, ["--load", "x", "--loop", "1"], "--loop", "--loops"),
])
def test_a_prefix_of_a_flag_is_refused_not_taken_for_it(parse, argv, prefix, known, capsys):
    """As Megatron (``allow_abbrev=False``): argparse would run ``--train-iter 5`` as ``--train-iters 5``, so a flag
    misspelt into a prefix of another (or of the one meant, until a second flag shares the prefix) went unnoticed."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert f"{prefix} (did you mean {known}?)" in err, err


def test_an_inference_flag_given_to_the_trainer_says_where_it_belongs(capsys):
    """Before 2026-12-06 `--exit-threshold 0.2` was answered `did you mean --exit-interval?`, a flag that stops the
    run with a checkpoint at every multiple of its value."""
    with pytest.raises(SystemExit) as exit_:
        train_args(["--exit-threshold", "0.2", "--trian-iters", "5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--exit-interval" not in err, err
    assert "--exit-threshold (early exit is evaluate's and generate's flag; training runs every loop: --override " \
           "exit_threshold=T sets" in err and "--trian-iters (did you mean --train-iters?)" in err


def test_scripts_share_the_one_line_error():
    """The typo comes first, before the required flags argparse would name instead."""
    out = subprocess.run([sys.executable, "data_prep/preprocess_data.py", "--inptu", "x"], capture_output=True,
                         text=True, cwd=REPO, env=launch_env(), timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: unrecognized argument --inptu (did you mean --input?); "), out.stderr


def test_trainer_help_describes_every_flag_and_lists_presets_with_sizes():
    parser = build_parser()
    undocumented = [a.option_strings for a in parser._actions if not a.help and a.option_strings]
    assert not undocumented
    text = parser.format_help()
    for name in PRESETS:
        assert f"\n  {name} " in text
    assert "7.1M total" in text and "917.10B total" in text  # tiny and 1t, as megamythos.model.params counts them
    assert all(a.help != argparse.SUPPRESS for a in parser._actions if a.dest != "local_rank")


def test_help_shows_defaults_but_not_the_true_a_no_flag_turns_off():
    """Found 2026-12-06: the planner's --help said "--no-replicate-core ... (default: True)", which reads as
    "partitioned by default", the opposite of what it means."""
    parser = errors.ArgumentParser(formatter_class=errors.HelpFormatter)
    parser.add_argument("--no-replicate-core", dest="replicate_core", action="store_false", help="partition it")
    parser.add_argument("--steps", type=int, default=4, help="how many")
    text = " ".join(parser.format_help().split())
    assert "partition it --steps" in text and "how many (default: 4)" in text, text


CLIS = ["megamythos.training.pretrain", "megamythos.inference.evaluate", "megamythos.inference.generate",
        "megamythos.checkpoint.export", "megamythos.hf.lm_eval_data", "megamythos.planning.plan",
        "megamythos.research.study",
        "data_prep/build_default_corpus.py", "data_prep/inspect_dataset.py", "data_prep/merge_datasets.py",
        "data_prep/preprocess_data.py", "tokenizer/train_tokenizer.py"]


def parsers_built(monkeypatch: pytest.MonkeyPatch) -> list:
    """The shared ArgumentParsers a command line builds, in order: parsing records the parser and stops the CLI
    (SystemExit) instead of reading arguments."""
    seen = []

    def inspect(parser, args=None, namespace=None):
        seen.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(errors.ArgumentParser, "parse_args", inspect)
    return seen


def cli_parser(cli: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The one parser ``cli`` (a module or a script of CLIS) builds when run as the docs run it."""
    seen = parsers_built(monkeypatch)
    monkeypatch.setattr(sys, "argv", [cli])
    with pytest.raises(SystemExit):
        if cli.endswith(".py"):
            runpy.run_path(str(REPO / cli), run_name="__main__")
        else:
            runpy.run_module(cli, run_name="__main__")
    (parser,) = seen
    return parser


def test_every_command_line_is_a_console_script_and_scripts_need_no_path_hacks():
    """Each documented command line has a console script calling the same function (the scripts outside the
    package just import it: no ``sys.path.insert``)."""
    scripts = console_scripts()
    assert len(scripts) >= 12
    targets = set()
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
        targets.add(module)
    assert {cli for cli in CLIS if not cli.endswith(".py")} <= targets
    for script in [cli for cli in CLIS if cli.endswith(".py")]:
        text = (REPO / script).read_text()
        assert "sys.path.insert" not in text, script
        assert "from megamythos.data.cli import" in text, script


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_a_console_script_s_usage_names_the_console_script(name, monkeypatch):
    """An installed package has the console scripts, not data_prep/ and tokenizer/. Found 2026-12-06:
    ``megamythos-preprocess --help`` began ``usage: python data_prep/preprocess_data.py``, a file it lacks (and
    ``megamythos-pretrain --help`` ``usage: python -m megamythos.training.pretrain``)."""
    module, function = console_scripts()[name].split(":")
    seen = parsers_built(monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"/env/bin/{name}"])
    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), function)()
    assert seen[0].format_usage().startswith(f"usage: {name} [-h]"), seen[0].format_usage()


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy re-running an imported module
def test_every_cli_uses_the_shared_parser_and_describes_every_flag(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # the width argparse wraps at
    parser = cli_parser(cli, monkeypatch)
    assert [a.dest for a in parser._actions if not a.help] == []
    # found 2026-12-06: the data_prep/ and tokenizer/ scripts began `usage: preprocess_data.py`, a file that does
    # not run from where the docs run it; every usage line names the command to type
    command = f"python {cli}" if cli.endswith(".py") else f"python -m {cli}"
    assert parser.format_usage().startswith(f"usage: {command} [-h]"), parser.format_usage()
    # found 2026-12-06: Sphinx roles from docstrings, "(default: None)" after every optional flag, and the
    # generate example's line continuation eaten by the docstring; 2026-12-07: the study's "(default: )" of an
    # empty --runs
    text = parser.format_help()
    assert not re.search(r":[a-z]+:`|``|\(default: (None|\[\])?\)", text), text
    assert not re.search(r"\S {8,}\[--", text), "an example command lost its line break"
    # found 2026-12-07: the wrapping broke after hyphens, cutting the flags a help names (`--train-data-` / `path`)
    assert not re.search(r"\w-\n", text), re.findall(r".*\w-\n.*", text)


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy re-running an imported module
def test_help_that_says_default_states_the_default(cli, monkeypatch):
    """``--help`` adds "(default: X)" unless a flag's help says "default" itself, so a help using the word for
    something else hid the default. Found 2026-12-07: ``--default-data-dir`` ("where the default stdlib corpus is
    built") never showed where that is."""
    parser = cli_parser(cli, monkeypatch)
    formatter = parser._get_formatter()
    hidden = [action.option_strings for action in parser._actions
              if "default" in (action.help or "") and formatter._get_help_string(action) == action.help
              and not isinstance(action.default, bool) and action.default not in (None, argparse.SUPPRESS, [], "")
              and not re.search(r"\(default\b|\bdefault:|\bdefault \d", action.help)]
    assert hidden == []


def test_prefix_without_text_document_gets_a_hint(tmp_path):
    with IndexedDatasetBuilder(str(tmp_path / "docs_text_document"), np.int32) as builder:
        builder.add_document(np.arange(10))
        builder.finalize()
    with pytest.raises(DataError, match=r"did you mean .*docs_text_document\?"):
        resolve_data([str(tmp_path / "docs")], 384)
    with pytest.raises(DataError) as err:
        resolve_data([str(tmp_path / "other")], 384)
    assert "did you mean" not in str(err.value)


def test_default_corpus_summarises_skipped_files(tmp_path, monkeypatch, caplog):
    empties = [tmp_path / "src" / f"empty{i}.py" for i in range(3)]
    for path in empties:
        path.parent.mkdir(exist_ok=True)
        path.write_text("")
    real = default_corpus.stdlib_sources(12)
    monkeypatch.setattr(default_corpus, "stdlib_sources", lambda max_files=None: real + [str(p) for p in empties])
    with caplog.at_level(logging.INFO):
        default_corpus.ensure_default_dataset(str(tmp_path / "out"), vocab_size=384, max_files=15)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("corpus ")]
    assert len(summary) == 1 and "skipped=3" in summary[0]


@pytest.mark.launch
def test_finished_run_says_there_is_nothing_to_do(corpus, tmp_path):
    args = [*tiny_args(corpus, 2), "--zero", "3", "--micro-batch-size", "2", "--global-batch-size", "2",
            "--save", str(tmp_path / "ckpt"), "--load", str(tmp_path / "ckpt"),
            "--tensorboard-dir", str(tmp_path / "tb"), "--metrics-file", str(tmp_path / "metrics.jsonl")]
    first = run_single(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "FutureWarning" not in first.stderr + first.stdout
    events, records = sorted((tmp_path / "tb").rglob("events.out.tfevents.*")), (tmp_path / "metrics.jsonl").read_text()
    again = run_single(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"the run in {tmp_path / 'ckpt'} already finished at iteration 2 of 2: nothing to do. Raise "
            "--train-iters to continue it (with --use-checkpoint-lr-schedule to stay at --min-lr, or "
            "--override-lr-schedule for a schedule over the new length), or start another run in a new folder"
            ) in again.stderr + again.stdout
    assert "iteration        1/" not in again.stderr + again.stdout
    # nothing trained, nothing logged: no empty TensorBoard event file per relaunch (found 2026-12-07)
    assert events and sorted((tmp_path / "tb").rglob("events.out.tfevents.*")) == events
    assert (tmp_path / "metrics.jsonl").read_text() == records
