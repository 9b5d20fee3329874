"""The environment the other nodes of a multi-node job get through DeepSpeed's environment file.

DeepSpeed's multi-node runner (0.19.8, ``deepspeed/launcher/runner.py``) exports to the other nodes the variables
whose names start with ``PYTHON``, ``MLFLOW``, ``MV2``, ``UCX`` or the accelerator's ``NCCL``, then each line
``KEY=VALUE`` of its environment file: the file named by ``DS_ENV_FILE`` (default ``.deepspeed_env``) in the home
directory, then in the working directory (both where both exist; a key of the latter wins). So a launcher that
points ``DS_ENV_FILE`` at a file of its own hides the user's ``~/.deepspeed_env``, where DeepSpeed's users keep
their fabric's NCCL/InfiniBand settings.

:func:`node_environment` is the one source of what our multi-node launchers (``launchers/slurm.sbatch``,
``launchers/pretrain_1t.sh``) hand to every node: the user's environment-file lines, then the launching shell's
:data:`FORWARDED` variables (which the runner would not export, or which the user set for this job: they win over
the file, with a warning naming the key), then :data:`NODE_DEFAULTS` for what neither sets.

    python -m megamythos.training.node_env FILE    # writes FILE; the launcher then sets DS_ENV_FILE=FILE
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from megamythos.errors import ArgumentParser, UserError, path_text, run_cli

logger = logging.getLogger(__name__)

DEEPSPEED_ENV_FILE = ".deepspeed_env"  # DeepSpeed's name when DS_ENV_FILE is unset
# What every node gets unless the user's environment or environment file sets it; common defaults, not requirements
# (launchers/slurm.sbatch's header says what each does)
NODE_DEFAULTS = {"NCCL_SOCKET_IFNAME": "^lo,docker", "NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
                 "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a name a shell exports (ASCII: bash refuses others)
# The launching shell's variables every node gets: the run folder, the NCCL and CUDA settings, and a thread count
# the user set (which the ranks keep instead of cores / local ranks)
FORWARDED = re.compile(r"(NCCL_|TORCH_NCCL_)[A-Za-z0-9_]+|CUDA_DEVICE_MAX_CONNECTIONS|OMP_NUM_THREADS|RUN_DIR")
SHELL_SPECIAL = re.compile(r'[\\$`"]')  # what a shell reading a value inside double quotes does not keep as it is


def user_env_files(env: Mapping[str, str], home: Path, cwd: Path) -> list[Path]:
    """The environment files DeepSpeed's runner would read in ``env`` without our ``DS_ENV_FILE``: its name in
    ``home``, then in ``cwd``, those that exist (one file once)."""
    name = env.get("DS_ENV_FILE") or DEEPSPEED_ENV_FILE
    found: list[Path] = []
    for path in (home / name, cwd / name):
        if path.is_file() and path.resolve() not in {p.resolve() for p in found}:
            found.append(path)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """``{KEY: VALUE}`` of the ``KEY=VALUE`` lines of ``path`` as DeepSpeed's runner reads them (the first ``=``
    splits, both sides stripped; a later line of a key wins), and blank lines, ``#`` comments and ``export KEY=VALUE``
    as a shell reads them. Those the runner mishandles: a blank line is a traceback, a comment line with a ``=``
    becomes ``export # ...;`` in front of each node's command (pdsh), which makes the rest of it a comment, and
    ``export KEY`` is no name launchers/slurm.sbatch's srun mode can ``export``; the file we write holds none of them,
    nor a key bash will not export (:func:`exportable`), skipped with a warning naming the file and line.
    A value keeps DeepSpeed's meaning: the shell that reads the file expands its ``$``, backquotes and ``\\`` inside
    double quotes (``LD_LIBRARY_PATH=/opt/x:$LD_LIBRARY_PATH``), in pdsh and in srun mode alike.

    Raises :class:`UserError` naming the file and the line for a line without ``=`` or a variable name before it,
    for a value with a ``"``: the runner wraps such a value in double quotes of its own, which the value's own
    quotes close (``K="a b"`` reaches the nodes as ``K=a``), and for a value a shell cannot read inside them
    (:func:`reads_in_quotes`: a trailing ``\\``, an unclosed backquote, ``$(`` or ``${``), which would end
    every node's command (pdsh) or the batch script (srun mode) in a syntax error."""
    found = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not sep or not VARIABLE.fullmatch(key):
            raise UserError(f"{path}:{number}: {line!r} is not KEY=VALUE with KEY a variable name, which DeepSpeed's "
                            "runner needs on every line of its environment file; fix or remove the line")
        if '"' in value:
            raise UserError(f"{path}:{number}: {line!r} has a \" in its value, which DeepSpeed's runner puts inside "
                            "double quotes of its own (a \"quoted\" value breaks them); write the value without quotes")
        if not reads_in_quotes(value.strip()):
            raise UserError(f"{path}:{number}: {line!r} ends inside what its value opens (a trailing \\, or a "
                            "backquote, $( or ${ left open), a syntax error in DeepSpeed's double quotes on every "
                            "node; close it, or escape a trailing \\ as \\\\")
        if not exportable(key):
            logger.warning("%s:%d: skipping %s, a variable bash will not export (read-only); DeepSpeed's pdsh mode "
                           "leaves it out too, and slurm.sbatch's srun mode would stop on it", path, number, key)
            continue
        found[key] = value.strip()
    return found


def exportable(key: str) -> bool:
    """Whether bash exports variable name ``key``: not one of its read-only variables (``UID``, ``EUID``, ``PPID``,
    ``SHELLOPTS``, ...), whose ``export`` fails (each node's pdsh command goes on without it; slurm.sbatch's srun
    mode, under ``set -e``, stops). Only ``export KEY=x`` runs, nothing of the file's value."""
    return subprocess.run(["bash", "-c", f"export {key}=x"], capture_output=True).returncode == 0


def reads_in_quotes(value: str) -> bool:
    """Whether bash parses ``export K="value"``, the line each node's shell runs (``bash -n`` reads it and executes
    nothing: no command of the value runs here)."""
    return subprocess.run(["bash", "-n", "-c", f'export K="{value}"'], capture_output=True).returncode == 0


def literal(key: str, value: str) -> str:
    """``value`` of this shell's variable ``key`` written for the environment file so that every node gets it as it
    is: the shell that reads the file (each node's in pdsh mode, inside DeepSpeed's double quotes; the batch
    script's in srun mode, likewise) would expand ``$``, backquotes and ``\\`` and end at a ``"``, so those are
    escaped. Raises :class:`UserError` for a line break, which would end the value's line of the file (the rest read
    as a line of its own: ``KEY=a\\nOTHER=1`` sets ``OTHER`` on every node)."""
    if "\n" in value or "\r" in value:
        raise UserError(f"{key}={value!r} of this shell has a line break in its value, which would end its line of "
                        "the environment file every node reads (the rest read as a line, or a variable, of its own); "
                        "give the value on one line")
    return SHELL_SPECIAL.sub(r"\\\g<0>", value)


def node_environment(env: Mapping[str, str], user_files: Sequence[Path]) -> dict[str, str]:
    """``{KEY: VALUE}`` every node of the job gets, as the file's lines: the lines of ``user_files`` (later files
    win), then the :data:`FORWARDED` variables of ``env`` as they are (:func:`literal`), a warning naming each key
    whose value they replace, then :data:`NODE_DEFAULTS` for the keys neither sets."""
    merged: dict[str, str] = {}
    source: dict[str, Path] = {}
    for path in user_files:
        for key, value in read_env_file(path).items():
            merged[key], source[key] = value, path
    for key in sorted(key for key in env if FORWARDED.fullmatch(key)):
        value = literal(key, env[key])
        if key in merged and merged[key] != value:
            logger.warning("%s=%s of this shell replaces %s=%s of %s for every node", key, env[key], key,
                           merged[key], source[key])
        merged[key] = value
    return {**merged, **{key: value for key, value in NODE_DEFAULTS.items() if key not in merged}}


def write_node_environment(out: Path, env: Mapping[str, str], home: Path, cwd: Path) -> None:
    """Write :func:`node_environment` into ``out`` as DeepSpeed's environment file, one ``KEY=VALUE`` a line."""
    variables = node_environment(env, user_env_files(env, home, cwd))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{key}={value}\n" for key, value in variables.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m megamythos.training.node_env FILE``: write the job's environment file."""
    parser = ArgumentParser(prog="python -m megamythos.training.node_env", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=path_text, help="the environment file to write (then DS_ENV_FILE=FILE)")

    def run() -> int:
        args = parser.parse_args(argv)
        write_node_environment(Path(args.file), os.environ, Path.home(), Path.cwd())
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
