"""The base class of every error that describes a bad input rather than a bug, and how command lines report it.

Each module keeps its own subclass (``ConfigError``, ``DataError``, ``CheckpointError``, ...), usually also
deriving from ``ValueError`` or ``RuntimeError``; :func:`run_cli` catches them all through
:class:`UserError`, so a new error class cannot be forgotten by one command line and remembered by another.
"""
from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

CLI_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
CONSOLE_SCRIPT_PREFIX = "megamythos-"  # of every console script setup.py installs
TIMED_CLI_LOG_FORMAT = f"%(asctime)s {CLI_LOG_FORMAT}"  # for the long-running data and tokenizer tools


class UserError(Exception):
    """A missing file, bad flag or inconsistent input: reported in one line, exit code 2, no traceback."""


def read_json_object(path: str | os.PathLike, error: type[UserError], remedy: str) -> dict[str, Any]:
    """The JSON object stored in ``path`` (a record a run wrote, a config a user gave).

    An empty file, invalid JSON, a value other than an object, or a file that cannot be read raises ``error``
    with one line naming the file, what is wrong with it and ``remedy``.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path} cannot be read ({err}); {remedy}") from err
    if not text.strip():
        raise error(f"{path} is empty; {remedy}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON ({err}); {remedy}") from err
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object; {remedy}")
    return data


def number(kind: type[int] | type[float], low: float, high: float | None = None, *,
           low_open: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type`` for a flag's value: a finite ``kind`` in [low, high] (``(low, high]`` with ``low_open``;
    ``high`` None: no upper bound). Anything else, NaN and infinity included, is argparse's one error line naming
    the flag::

        error: argument --workers: must be >= 1, got 0
    """
    def shown(bound: float) -> str:  # an integer's bound whole: 4294967295, not 4.29497e+09
        return str(int(bound)) if kind is int else f"{bound:g}"

    if high is None:
        requirement = f"be > {shown(low)}" if low_open else f"be >= {shown(low)}"
    else:
        requirement = f"lie in {'(' if low_open else '['}{shown(low)}, {shown(high)}]"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; it must {requirement}") from None
        if not ((value > low if low_open else value >= low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must {requirement}, got {text}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def unexpanded_home(path: str) -> str | None:
    """Why ``path`` is refused where it starts with ``~`` (``~/x``, ``~user/x``): no shell expanded it, since a shell
    expands ``~`` only at the start of a word (``--save=~/x``, or ``RUN_DIR="~/x"`` in quotes, keeps it), and it
    would name a folder called ``~`` in the working directory; None for any other path."""
    if not path.startswith("~"):
        return None
    return (f"{path!r} starts with ~, which no shell expanded (it does only at the start of a word, not after "
            "--flag= or inside quotes): give the flag and the path as two words (--flag ~/x), or $HOME/x; ./~ names "
            "a folder called ~")


def expanded_path(text: str) -> str:
    """An argparse ``type`` for a path flag: a path that starts with a ``~`` no shell expanded is argparse's one error
    line naming the flag (:func:`unexpanded_home`); anything else is kept, for the flag's own checks."""
    if (why := unexpanded_home(text)) is not None:
        raise argparse.ArgumentTypeError(why)
    return text


expanded_path.__name__ = "path"


def given_text(what: str, optional: bool = True, path: bool = False) -> Callable[[str], str]:
    """An argparse ``type`` for a flag whose value names ``what`` (a path, a JSON key, a dataset): ``''`` (which code
    reads as the flag left out, or a path as the working directory) is argparse's one error line naming the flag::

        error: argument --json-key: is empty; give a JSON key, or leave the flag out

    ``optional`` False: a positional argument, which cannot be left out (``... is empty; give a path``). ``path``:
    a path that starts with an unexpanded ``~`` is refused too (:func:`unexpanded_home`)."""
    leave_out = ", or leave the flag out" if optional else ""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"is empty; give {what}{leave_out}")
        return expanded_path(text) if path else text

    parse.__name__ = "text"
    return parse


def utf8_text(text: str) -> str:
    """An argparse ``type`` for free text (a prompt): bytes of the command line that are not UTF-8, which Python keeps
    as lone surrogates and no tokenizer encodes, are argparse's one error line naming the flag and the first such
    byte::

        error: argument --prompt: must be UTF-8 text, got byte 0xe6 at byte 3; ...
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        offset = len(text[:err.start].encode("utf-8", "surrogateescape"))
        byte = text[err.start].encode("utf-8", "surrogateescape")[0]
        raise argparse.ArgumentTypeError(f"must be UTF-8 text, got byte 0x{byte:02x} at byte {offset}; give it in "
                                         "UTF-8 (a UTF-8 terminal or locale)") from None
    return text


utf8_text.__name__ = "text"


# the type of a path flag (error: argument --out: is empty; give a path, ...), and of a positional path
path_text = given_text("a path", path=True)
path_argument = given_text("a path", optional=False, path=True)


def checked_by(check: Callable[[str], Any], path: bool = False) -> Callable[[str], str]:
    """An argparse ``type`` that keeps a flag's text after ``check`` accepts it; a :class:`UserError` from ``check``
    becomes argparse's one error line naming the flag. ``path``: the flag names a path, ``''`` refused first as by
    :data:`path_text`."""
    def parse(text: str) -> str:
        try:
            check(path_text(text) if path else text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    parse.__name__ = "value"
    return parse


def plain_text(docstring: str) -> str:
    """A docstring as ``--help`` shows it: Sphinx roles (``:func:`x```) and inline literals (````x````) as plain
    ``x``."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", docstring).replace("``", "")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` of every command line: the description as written, each flag's help wrapped between words, and
    each flag's default after its help where it has one the help does not state already (not an empty list or text,
    nor a ``store_false`` flag's True: that is the setting the flag turns off, which read as "on by default" next to
    ``--no-...``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        """A flag's help wrapped at spaces only: argparse's wrapping also breaks after hyphens, which cut the flags
        a help names in two (``--train-data-`` / ``path``)."""
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False or (isinstance(action.default, (list, str))
                                                                         and not action.default)
        unset = unset or (action.const is False and action.default is True)  # store_false
        if unset or action.default is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command line: a bad command line is one ``error: ...`` line on stderr and exit code 2
    (not the usage block), and an unknown flag names the closest known one::

        error: unrecognized argument --trian-iters (did you mean --train-iters?)
    """

    def __init__(self, *args: Any, description: str | None = None, elsewhere: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        """``elsewhere``: flags of other commands that users bring here, each with what to do instead; such a flag
        is refused with that, not with the closest known flag (which may do something else entirely). ``prog``
        (the documented command: ``python -m megamythos...``, ``python data_prep/...``) gives way to the console
        script's name when one runs the command (setup.py's ``megamythos-*``): an installed package has those, not
        the scripts outside the package."""
        console_script = os.path.basename(sys.argv[0]) if sys.argv else ""
        if console_script.startswith(CONSOLE_SCRIPT_PREFIX):
            kwargs["prog"] = console_script
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # as Megatron: a prefix of a flag is a typo, not that flag
        super().__init__(*args, description=plain_text(description) if description else description, **kwargs)
        self.elsewhere = dict(elsewhere or {})

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            message = self._unrecognized(message[len(prefix):].split())
        else:  # argparse reports missing required flags first; a mistyped one is the likelier cause
            known = self._known_flags()
            argv = getattr(self, "_argv", [])
            flags = argv[:argv.index("--")] if "--" in argv else argv  # what follows "--" is not this parser's
            typos = [a for a in flags
                     if a.startswith("--") and a.split("=", 1)[0] not in known]
            message = f"{self._unrecognized(typos)}; {message}" if typos else message
        self.exit(2, f"error: {message}\n")

    def _known_flags(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def _unrecognized(self, args: list[str]) -> str:
        """``unrecognized argument --x (did you mean --y?)`` for the flags among ``args`` (their values aside)."""
        flags = [a for a in args if a.startswith("-")] or args
        known = self._known_flags()
        parts = []
        for flag in flags:
            name = flag.split("=", 1)[0]
            if name in self.elsewhere:
                parts.append(f"{flag} ({self.elsewhere[name]})")
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            parts.append(flag + (f" (did you mean {close[0]}?)" if close else ""))
        return f"unrecognized argument{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def path_too_long(err: OSError) -> str | None:
    """The one line for ``err`` where the system refused a path given for its length (ENAMETOOLONG: a bad input,
    whichever flag named it), else None; a long path is shown by its start and its length."""
    if err.errno != errno.ENAMETOOLONG:
        return None
    name = str(err.filename)
    shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"
    return f"{shown}: file name too long; give a shorter path"


def run_cli(main: Callable[[], int], log_format: str | None = CLI_LOG_FORMAT) -> int:
    """Run a command line's ``main`` and return its exit code; a user error ends it with ``error: MESSAGE`` on
    stderr and exit code 2, Ctrl-C with ``error: interrupted`` and 130 (the shell's code for SIGINT), a closed
    stdout (``| head``) quietly with 141 (SIGPIPE's); a path too long for the system (:func:`path_too_long`) is a
    user error too.

    ``log_format``: INFO logging to stderr in this format (None: the caller configured logging itself).
    The error is not logged besides: the log writes to the same stderr, where it would say it a second time.
    """
    if log_format is not None:
        logging.basicConfig(level=logging.INFO, format=log_format, stream=sys.stderr)
    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the user knows why; what was being written is cleaned up on the way out
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # stdout's reader left (`| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail again
        return 141  # the shell's code for SIGPIPE
    except OSError as err:
        line = path_too_long(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 2
