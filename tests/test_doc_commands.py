"""A command in README.md or docs/*.md runs as written: each flag it gives is one its command line defines, with
exactly that spelling (``deepspeed``'s parser would accept an abbreviation of its flags, so a misspelt one that
happens to be a prefix would pass a real run unnoticed; ours refuse one), each value of a flag with fixed choices
is one of them, each ``python -m megamythos...`` module, each script and each file of the repository's folders it
names exists, and each ``make`` target is the Makefile's. The same holds for the examples in each command line's
``--help`` and header comment, and a default a document states as "`--flag` (N)" is the code's.

Commands are read from the ``bash`` blocks and from inline code that starts with a command; nothing runs: each
command line's parser is taken from its ``main`` as it starts parsing (:func:`parser_of`), a subcommand's
(``bench/bench_train.py throughput``) from its parent's. Any Python interpreter (``.venv/bin/python``, the
reference's ``/work/bench-venv-ref/bin/python``) counts as ``python``, and a command line is split into its commands
at ``&&``, ``;``, ``|`` and a subshell's parentheses.

The READMEs under bench/ (and any under docs/) are held to the same rule, dated measurements included: a dated
run's command is how to reproduce its figures, so it must parse on today's scripts; where a flag has since been
renamed with the same meaning the command carries today's spelling. The one exception is a command that runs
another checkout's code, which is how bench/README.md records a run of an older commit: the commands after a
``cd`` (to the end of its subshell, ``(cd /tmp/base && python bench/...)``, or else to the end of the block,
``git worktree add /tmp/w 5dc3b93 && cd /tmp/w``) are that commit's and are not checked. A script outside a fresh
clone (``../shared/gpu/prepare.sh``, ``.device/run.sh`` that an earlier step makes) and a file a command writes
(``--out bench/results/x.json``) need not exist."""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

from megamythos.training.launch import LAUNCHER_FLAGS
from tests.helpers import DOCS, REPO, console_scripts

FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
# the words a command of ours starts with (after VAR=value assignments); inline code starting otherwise is prose
COMMAND_WORDS = ("python", "bash", "deepspeed", "make", "sbatch", "lm_eval", "megamythos-")
INTERPRETER = re.compile(r"(?:\S*/)?python3?")  # python3, .venv/bin/python, /work/bench-venv-ref/bin/python: python
ANGLED = re.compile(r"<(\w[^<>\n]*)>")  # a word the docs leave to the reader: PYTHONPATH=.:<open-mythos dir>
# commands that hand what follows `--` to another (the planner: to the trainer command it prints)
PASSED_ON = {"megamythos.planning.plan": "megamythos.training.pretrain", "megamythos-plan": "megamythos-pretrain",
             "bench/bench_comm.py": "megamythos.training.pretrain"}
# flags whose value holds another command's flags (bench_train.py's --variant NAME=[VAR=value ...] FLAGS): that command
FLAGS_IN_VALUE = {("bench/bench_train.py throughput", "--variant"): "launchers/pretrain.sh"}
LAUNCHER_SCRIPTS = ("launchers/pretrain.sh", "launchers/pretrain_1t.sh", "launchers/slurm.sbatch")  # --help: header
# the benchmarks' READMEs (DOCS has the user's documents) and scripts (their docstring or header comment: their help)
BENCH_DOCS = sorted({*(REPO / "bench").rglob("README.md"), *(REPO / "docs").rglob("README.md")} - set(DOCS))
BENCH_SCRIPTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "bench").glob("*") if p.suffix in (".py", ".sh"))
REPOSITORY_FOLDERS = ("bench", "data_prep", "docs", "ds_configs", "launchers", "lm_eval_tasks", "megamythos",
                      "tests", "tokenizer")
PLACEHOLDER = re.compile(r"\.\.\.|[A-Z][A-Z\d_]*")  # a word of a command the docs leave to the reader (N, DIR)
OUTPUT_FLAG = re.compile(r"--out(?:put)?(?:[-_][\w-]+)?")  # its value is a file the command writes: need not exist
TOP_LEVEL_CD = re.compile(r"^[^(#]*?(?:^|&&|;)\s*cd\s")  # a `cd` outside a subshell: the block goes on elsewhere


class Captured(BaseException):
    """Raised in place of parsing, carrying the parser (a BaseException: the CLIs' error handlers let it pass)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def parser_of(start: Callable[[], object]) -> argparse.ArgumentParser:
    """The parser that ``start`` (a command line's ``main``, run with no arguments) parses with: parsing is
    replaced by raising it, so nothing past the parse runs."""
    def capture(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Captured(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            start()
        except Captured as captured:
            return captured.parser
    raise AssertionError(f"{start} returned without parsing its arguments")


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``parser``'s option strings, each with its action (``-h`` and ``--help`` included)."""
    return dict(parser._option_string_actions)


@cache
def entry_point(command: str) -> Callable[..., object]:
    """The ``main`` of ``command``: ``python -m MODULE``'s module, a script's (``data_prep/x.py`` imports it) or
    a console script's function (setup.py)."""
    if command.startswith("megamythos-"):
        module, function = console_scripts()[command].split(":")
        return getattr(importlib.import_module(module), function)
    if command.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"doc_script_{Path(command).stem}", REPO / command)
        script = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(script)  # the scripts run main only under __main__
        return script.main
    return importlib.import_module(command).main


@cache
def cli_flags(command: str) -> dict[str, argparse.Action | None]:
    """Every flag ``command`` takes, with its action (None: a flag the script handles before any parser)."""
    if command in ("launchers/pretrain.sh", "megamythos.training.launch"):  # launcher flags, then the trainer's
        launcher = {f"--{name.replace('_', sep)}": None for name in LAUNCHER_FLAGS for sep in "-_"}
        return {**launcher, **cli_flags("megamythos.training.pretrain")}
    if command == "launchers/pretrain_1t.sh":
        return {"--dry-run": None, **cli_flags("megamythos.training.pretrain")}
    if command == "lm_eval":
        from lm_eval._cli import HarnessCLI
        return flags(HarnessCLI()._subparsers.choices["run"])
    return flags(cli_parser(command))


@cache
def cli_parser(command: str) -> argparse.ArgumentParser:
    """The parser of a command line of ours (``python -m MODULE``, a script of bench/, data_prep/ or tokenizer/, or
    a console script), or of its subcommand (``bench/bench_train.py throughput``)."""
    line, _, subcommand = command.rpartition(" ")
    if line:
        return subcommand_parsers(cli_parser(line))[subcommand]
    main = entry_point(command)
    return parser_of(lambda: main([]))


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``parser``'s subcommands, each with its parser ({} when it has none)."""
    return next((dict(action.choices) for action in parser._actions
                 if isinstance(action, argparse._SubParsersAction)), {})


def subcommands(command: str) -> set[str]:
    """The subcommands of ``command``: a script of ours may have them (``bench/bench_train.py``: memory,
    throughput); the launchers, lm_eval and the modules of ours have none."""
    return set(subcommand_parsers(cli_parser(command))) if command.endswith(".py") else set()


@cache
def deepspeed_flags() -> dict[str, argparse.Action]:
    from deepspeed.launcher.runner import parse_args
    return flags(parser_of(lambda: parse_args([])))


def fenced_lines(block: str) -> Iterator[str]:
    """The commands of a bash block: continuation lines joined, here-documents left out, and none after a line that
    changes into another directory (``cd /tmp/w``, a worktree of an older commit): they run that checkout's code."""
    lines = iter(block.replace("\\\n", " ").splitlines())
    for line in lines:
        heredoc = HEREDOC.search(line)
        if heredoc:
            for end in lines:
                if end.strip() == heredoc.group(1):
                    break
        yield line
        if TOP_LEVEL_CD.search(line):
            return


def simple_commands(line: str) -> Iterator[list[str]]:
    """The words of each command of a command line, split at ``&&``, ``||``, ``;``, ``|`` and a subshell's
    parentheses; after a ``cd``, none to the end of its subshell (or of the line): they run in another checkout
    (``(cd /tmp/base && python bench/...)``). A ``<word>`` left to the reader is one word."""
    lexer = shlex.shlex(ANGLED.sub(lambda m: "<" + m.group(1).replace(" ", "_") + ">", line), posix=True,
                        punctuation_chars="&;|()")
    lexer.whitespace_split = True
    depth, away, words = 0, None, []  # away: the subshell depth at which a `cd` was met
    for word in [*lexer, ";"]:
        if word.strip("&;|()"):
            words.append(word)
            continue
        if words and away is None:
            if words[0] == "cd":
                away = depth
            else:
                yield words
        words, depth = [], depth + word.count("(") - word.count(")")
        if away is not None and depth < away:
            away = None


def doc_commands(text: str) -> Iterator[str]:
    """The commands in a document: each line of a bash block, and inline code starting with a command word."""
    for language, block in FENCE.findall(text):
        if language in ("bash", "sh", ""):
            yield from fenced_lines(block)
    yield from inline_commands(FENCE.sub("", text))


def inline_commands(text: str) -> Iterator[str]:
    """Inline code of ``text`` that starts with a command word (after ``VAR=value`` assignments)."""
    for code in re.findall(r"`([^`]+)`", text):
        if starts_a_command(code):
            yield " ".join(code.split())


def starts_a_command(text: str) -> bool:
    words = [w for w in text.split() if not ASSIGNMENT.match(w)]
    return bool(words) and command_word(words[0]).startswith(COMMAND_WORDS)


def without_assignments(words: list[str]) -> list[str]:
    """``words`` from the first that is not a ``VAR=value`` assignment (the command's environment) on."""
    return words[next((i for i, w in enumerate(words) if not ASSIGNMENT.match(w)), len(words)):]


def command_word(word: str) -> str:
    """The command ``word`` runs: ``python`` for any Python interpreter (``.venv/bin/python``, a reference venv's
    ``/work/bench-venv-ref/bin/python``: the flags are the script's whichever runs it), else ``word``."""
    return "python" if INTERPRETER.fullmatch(word) else word


def check_args(args: list[str], command: str, where: str) -> list[str]:
    """What is wrong with ``args`` for ``command``: flags it does not define (exactly as spelt), and values outside
    a flag's choices; what follows ``--`` is checked against the command that ``command`` passes it to, and so are
    the flags in a value of :data:`FLAGS_IN_VALUE`."""
    if args and args[0] in subcommands(command):
        return check_args(args[1:], f"{command} {args[0]}", where)
    known = cli_flags(command)
    problems = []
    for i, arg in enumerate(args):
        if arg == "--" and command in PASSED_ON:
            return problems + check_args(args[i + 1:], PASSED_ON[command], where)
        arg = arg.strip("[]{}|")
        if not arg.startswith("-") or arg == "-" or re.fullmatch(r"-[\d.e]+", arg):
            continue
        name, _, inline = arg.partition("=")
        if name not in known:
            problems.append(f"{where}: {name} is not a flag of it")
            continue
        action = known[name]
        value = inline or (args[i + 1].strip("[]{}|") if i + 1 < len(args) else None)
        if (command, name) in FLAGS_IN_VALUE and value is not None:
            passed = without_assignments(shlex.split(value.partition("=")[2]))
            problems += check_args(passed, FLAGS_IN_VALUE[command, name], where)
        if action is not None and action.choices is not None and action.nargs is None and value is not None \
                and not PLACEHOLDER.fullmatch(value) and not among_choices(action, value):
            problems.append(f"{where}: {name} {value}: not one of {sorted(map(str, action.choices))}")
    return problems


def among_choices(action: argparse.Action, value: str) -> bool:
    try:
        return (action.type or str)(value) in action.choices
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False


def check_command(words: list[str], where: str) -> list[str]:
    """What is wrong with one command (its words, assignments before it already left out)."""
    head, rest = words[0], words[1:]
    if head == "python":
        if rest[:1] == ["-m"] and len(rest) > 1 and re.fullmatch(r"[\w.]+", rest[1]):  # not `megamythos.*`
            module = rest[1]
            if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
                return [f"{where}: no module {module}"]
            return check_args(rest[2:], module, where) if module.startswith("megamythos.") else []
        if rest and rest[0].endswith(".py"):
            if not (REPO / rest[0]).is_file():
                return [f"{where}: no file {rest[0]}"]
            scripted = rest[0].startswith(("bench/", "data_prep/", "tokenizer/"))
            return check_args(rest[1:], rest[0], where) if scripted else []
        return []
    if head in ("bash", "sbatch"):
        script = next((w for w in rest if not w.startswith("-")), None)  # sbatch's own flags come first
        if script is None:  # sbatch's own flags alone
            return []
        if not (REPO / script).is_file():
            return [f"{where}: no file {script}"] if in_a_fresh_clone(script) else []
        args = rest[rest.index(script) + 1:]
        target = "launchers/pretrain.sh" if script == "launchers/slurm.sbatch" else script
        return check_args(args, target, where) if target.startswith("launchers/pretrain") else []
    if head == "deepspeed":
        return check_deepspeed(rest, where)
    if head == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE)
        problems = [f"{where}: no make target {w}" for w in rest if not ASSIGNMENT.match(w) and w not in targets]
        for word in rest:
            if word.startswith("ARGS="):
                problems += check_args(shlex.split(word[len("ARGS="):]), "launchers/pretrain.sh", where)
        return problems
    if head == "lm_eval" or head.startswith("megamythos-"):
        if head.startswith("megamythos-") and head not in console_scripts():
            return [f"{where}: no console script {head}"]
        return check_args(rest, head, where)
    return []


def in_a_fresh_clone(path: str) -> bool:
    """Whether ``path`` is one a fresh clone would hold: not outside it (``../shared/gpu/prepare.sh``, an absolute
    path) nor in a dot-folder an earlier step makes (``.device/run.sh``, ``.venv/``)."""
    return not (Path(path).is_absolute() or Path(path).parts[0].startswith("."))


def check_deepspeed(args: list[str], where: str) -> list[str]:
    """``deepspeed [runner flags] SCRIPT|--module M [its flags]``: the runner's flags, then the script's."""
    known = deepspeed_flags()
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name = args[i].split("=", 1)[0]
        if name not in known:
            return [f"{where}: {name} is not a flag of deepspeed"]
        if name == "--module":
            return check_args(args[i + 2:], args[i + 1], where)
        i += 1 if known[name].nargs == 0 or "=" in args[i] else 2
    if i == len(args) or not (REPO / args[i]).is_file():
        return [f"{where}: no script after the deepspeed flags"]
    return check_args(args[i + 1:], args[i], where) if args[i].startswith("launchers/pretrain") else []


def help_commands(text: str) -> Iterator[str]:
    """The example commands of a ``--help`` text or a script's header comment: lines that start with a command
    word, continuation lines joined."""
    for line in re.sub(r"\\\n[#\s]*", " ", text).splitlines():
        line = line.lstrip("# ")
        if starts_a_command(line):
            yield line
    yield from inline_commands(text)


def help_text(name: str) -> str:
    """What a command line of ours says about its use: a console script's ``--help``, a Python script's docstring
    (bench/: its ``--help`` may show only the first paragraph), or a shell script's header comment."""
    if name in console_scripts():
        return cli_parser(name).format_help()
    if name.endswith(".py"):
        return ast.get_docstring(ast.parse((REPO / name).read_text())) or ""
    return "\n".join(line for line in (REPO / name).read_text().splitlines() if line.startswith("#"))


def repository_paths(words: list[str]) -> list[str]:
    """The paths inside the repository's own folders that ``words`` name (``ds_configs/x.json``, ``tests/x.py``;
    not a run's or a user's folders, nor globs, nor a file the command writes:
    ``--out bench/results/x.json``)."""
    words = [w.strip("[]") for w in words]
    values = [w.split("=", 1)[-1] for i, w in enumerate(words)
              if not OUTPUT_FLAG.fullmatch(w.split("=", 1)[0]) and not (i and OUTPUT_FLAG.fullmatch(words[i - 1]))]
    return [v for v in values if v.split("/")[0] in REPOSITORY_FOLDERS and "/" in v and not re.search(r"[*{\[]", v)]


def problems_in(text: str, name: str, commands: Callable[[str], Iterator[str]] = doc_commands) -> list[str]:
    """What is wrong with the commands of ``text`` (a document named ``name``), found by ``commands``."""
    problems = []
    for command in commands(text):
        for words in simple_commands(command):
            words = without_assignments(words)
            words[:1] = map(command_word, words[:1])
            if len(words) > 1 and words[0].startswith(COMMAND_WORDS):
                where = f"{name}: {command.split('#')[0].strip()}"
                problems += check_command(words, where)
                problems += [f"{where}: no file {path}" for path in repository_paths(words)
                             if not (REPO / path).exists()]
    return list(dict.fromkeys(problems))  # a missing script is named once


def test_a_misspelt_flag_or_missing_command_in_a_doc_is_named():
    """The check itself: each of these mistakes is found (an abbreviation too, which ``deepspeed`` would accept)."""
    doc = """```bash
python -m megamythos.inference.evaluate --load runs/x --loosp 1,2   # a comment --not-a-flag
deepspeed --num_gpus 2 launchers/pretrain.sh --preset tiny \\
    --train-iter 5
deepspeed --num_gpu 2 launchers/pretrain.sh
```
Export with `python -m megamythos.checkpoint.export a b --format gguf`, then `make pretrian`,
`python -m megamythos.planning.plan --zero x`,
`bash launchers/pretrain.sh --num-gpus 2 --lr-schedule cosin`, `python data_prep/tokenise.py --input x`,
`python -m megamythos.inference.evaluation --load x`; `python -m megamythos.planning.plan --gpus 8 -- --lr-shedule wsd`;
`bash launchers/pretrain.sh --ds-config ds_configs/multinode.json`.
"""
    found = "\n".join(problems_in(doc, "doc.md"))
    for mistake in ("--loosp is not a flag", "--num_gpu is not a flag of deepspeed", "--train-iter is not a flag",
                    "--format gguf: not one of", "--zero x: not one of", "no make target pretrian",
                    "--lr-schedule cosin: not one of",
                    "no file data_prep/tokenise.py", "no module megamythos.inference.evaluation",
                    "--lr-shedule is not a flag", "no file ds_configs/multinode.json"):
        assert mistake in found, (mistake, found)
    assert "--not-a-flag" not in found and len(found.splitlines()) == 11, found


def test_a_misspelt_flag_in_a_bench_command_is_named_and_another_checkout_s_is_not_checked():
    """The check on bench/README.md's kind of command: a reference venv's interpreter, a subcommand's flags, a word
    left to the reader in ``<>``, commands joined by ``&&`` or in a subshell, trainer flags after ``--`` and in a
    ``--variant``; what runs after a ``cd`` (another checkout's code), a script outside the clone and a file a
    command writes are left alone."""
    doc = """```bash
OMP_NUM_THREADS=1 PYTHONPATH=. /work/bench-venv-ref/bin/python bench/bench_model.py speed --modez ours_bf16 \\
    --out bench/results/not_yet_written.json
PYTHONPATH=.:<open-mythos dir> python bench/bench_casts.py --mode uncached --out bench/results/casts.json
PYTHONPATH=. .venv/bin/python bench/bench_train.py memory --variant bf16=--bf16
PYTHONPATH=. python bench/bench_train.py throughput --variant "zero2=OMP_WAIT_POLICY= --bf16 --zeros 2"
git worktree add /tmp/base 2db5f4d && PYTHONPATH=. python bench/bench_attention.py --rep 3
for r in 1 2; do
  (cd /tmp/base && python bench/bench_attention.py --flag-of-then 1); python bench/bench_data.py --repeat 3
done
python bench/bench_comm.py -- --lr-shedule wsd
bash ../shared/gpu/prepare.sh && DEST=$OUT bash .device/run.sh bash bench/gpu_sesion.sh
git worktree add /tmp/w 5dc3b93 && cd /tmp/w
python bench/bench_train.py throughput --flag-of-then 1
```
"""
    found = "\n".join(problems_in(doc, "bench/README.md"))
    for mistake in ("--modez is not a flag", "--mode is not a flag", "--variant is not a flag", "--rep is not a flag",
                    "--repeat is not a flag", "--lr-shedule is not a flag", "no file bench/gpu_sesion.sh",
                    "--zeros is not a flag"):
        assert mistake in found, (mistake, found)
    assert len(found.splitlines()) == 8, found


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_command_in_the_docs_runs_as_written(doc):
    assert problems_in(doc.read_text(), doc.name) == []


@pytest.mark.parametrize("doc", BENCH_DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_command_in_a_bench_readme_runs_as_written(doc):
    """How to reproduce each benchmark, dated runs too (the module docstring: which commands are history)."""
    assert problems_in(doc.read_text(), str(doc.relative_to(REPO))) == []


@pytest.mark.parametrize("name", [*sorted(console_scripts()), *LAUNCHER_SCRIPTS, *BENCH_SCRIPTS])
def test_every_command_in_a_help_text_runs_as_written(name):
    assert problems_in(help_text(name), f"{name} --help", help_commands) == []


def stated_defaults(text: str) -> list[tuple[str, str]]:
    """The defaults a document states in the form "`--flag` (VALUE)": [(flag, VALUE)]."""
    return re.findall(r"`(--[\w-]+)(?: [A-Z]+)?` \((-?[\d.]+(?:e-?\d+)?)\)", " ".join(text.split()))


def test_every_default_the_docs_state_is_the_code_s():
    """"`--keep-last` (3)": some command line of ours takes the flag with that default (the check cannot tell
    which command a sentence means, so a flag of several passes with any one's default). A flag whose parser
    default is None, its value decided after parsing, states the default in its help ("default 8")."""
    defaults: dict[str, list[str]] = {}
    for name in console_scripts():
        for option, action in cli_flags(name).items():
            stated = re.findall(r"default:? ([\d.]+)\b", action.help or "") if action.default is None else []
            defaults.setdefault(option, []).extend([str(action.default), *stated])
    found = [(doc.name, flag, value) for doc in DOCS for flag, value in stated_defaults(doc.read_text())]
    wrong = [f"{doc}: {flag} ({value}), code: {defaults.get(flag)}" for doc, flag, value in found
             if not any(same_number(value, d) for d in defaults.get(flag, []))]
    assert len(found) >= 10 and wrong == []


def same_number(text: str, default: str) -> bool:
    try:
        return float(text) == float(default)
    except ValueError:
        return False
