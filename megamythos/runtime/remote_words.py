"""Which words of a job's command line reach the other nodes as they are, through DeepSpeed 0.19.8's pdsh runner.

A job that DeepSpeed's runner starts on several nodes over ssh (``deepspeed --hostfile F ...`` without
``--no_ssh``: ``bash launchers/pretrain.sh --hostfile F``, ``launchers/slurm.sbatch`` with MODE=pdsh,
``launchers/pretrain_1t.sh``) reaches every node as one line that pdsh hands to the node's shell
(``deepspeed/launcher/multinode_runner.py``, ``PDSHRunner``)::

    export KEY=VALUE; ... cd CWD; python -u -m deepspeed.launcher.launch --node_rank=%n ... SCRIPT ARG ...

The runner quotes an argument that holds a space inside double quotes (a ``"`` of it written ``\\"``) and leaves
every other argument, and the working directory, bare. The node's shell reads the line again:

* a bare word loses its quotes and backslashes; expands ``$``, backquotes, globs (``*``, ``?``, ``[``), braces and
  a ``~`` that starts it (or, in a word shaped as an assignment, follows ``=`` or ``:``); ends at a blank, a line
  break, ``;``, ``&``, ``|``, ``<``, ``>`` or ``(``; and one that starts with ``#`` comments out the rest of the
  line;
* a double-quoted word expands ``$``, backquotes and backslashes;
* an empty argument is no word at all.

pdsh replaces ``%n`` (the node's rank, which the runner's own ``--node_rank=%n`` relies on) and, by its manual,
``%h``, ``%u`` and ``%%`` before that. Such an argument reaches the ranks changed (a path under another name, a
value split in two, a flag lost) or ends the node's command, so :func:`check_remote_words` refuses it before
anything starts. Spaces, letters of any script, ``'`` beside a space, ``=``, ``,``, ``@``, ``+``, ``-``, ``.`` and
``/`` reach the nodes.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from megamythos.errors import UserError, run_cli

BARE_SPECIAL = re.compile(r"""['"\\$`;&|<>(){*?\[ \t\n]|^[~#]|[=:]~""")  # what a shell changes in a bare word
QUOTED_SPECIAL = re.compile(r"[\\$`]")  # what it changes inside double quotes (the runner escapes `"` itself)
PDSH_SUBSTITUTION = re.compile(r"%[nhu%]")
WITHOUT_SSH = ("start each node yourself without ssh (bash launchers/pretrain.sh --node_rank R on every node, or "
               "launchers/slurm.sbatch with MODE=srun)")


class RemoteWordError(UserError, ValueError):
    """A word of the command line that DeepSpeed's pdsh command would hand to the other nodes changed."""


def runner_quoting(arg: str) -> str:
    """``arg`` as DeepSpeed 0.19.8's ``PDSHRunner.parse_user_args`` writes it into the nodes' command line."""
    return '"{}"'.format(arg.replace('"', '\\"')) if " " in arg else arg


def remote_change(arg: str, quoted: bool = True) -> str | None:
    """What the node's shell (or pdsh) would make of argument ``arg`` (``quoted``: the runner quotes it where it
    holds a space; the working directory it never quotes), in words; None where it arrives as it is."""
    if not arg:
        return "an empty argument is no word on the node's command line"
    if found := PDSH_SUBSTITUTION.search(arg):
        return f"pdsh replaces {found.group()} in the command line (%n: the node's rank)"
    spaced = quoted and " " in arg
    found = (QUOTED_SPECIAL if spaced else BARE_SPECIAL).search(arg)
    if found is None:
        return None
    where = "inside the double quotes DeepSpeed puts around a value with a space" if spaced else "unquoted"
    return f"the node's shell reads {found.group()[-1]!r} {where}"


def check_remote_words(args: Sequence[str], cwd: str) -> None:
    """Raise :class:`RemoteWordError` naming the first of ``args`` (the script's or module's arguments) or the
    working directory ``cwd`` that would not reach the other nodes as it is (:func:`remote_change`)."""
    for arg in args:
        if (change := remote_change(arg)) is not None:
            raise RemoteWordError(f"{arg!r} would not reach the other nodes as it is: {change} (DeepSpeed's pdsh "
                                  "command line hands every argument to each node's shell); rename the path (or use "
                                  f"a symbolic link without that character), or {WITHOUT_SSH}")
    if (change := remote_change(cwd, quoted=False)) is not None:
        raise RemoteWordError(f"the working directory {cwd!r} would not reach the other nodes: {change} (DeepSpeed's "
                              f"pdsh command line runs `cd {cwd}` in each node's shell); launch from a directory "
                              f"whose path has no such character, or {WITHOUT_SSH}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m megamythos.runtime.remote_words ARG ...`` (launchers/slurm.sbatch's pdsh mode): exit 0 where
    every argument and the working directory reach the other nodes as they are, else one ``error:`` line and 2."""
    check_remote_words(list(sys.argv[1:] if argv is None else argv), os.getcwd())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
