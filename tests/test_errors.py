"""Every user-facing error derives from :class:`megamythos.errors.UserError`, and every command line reports it
the same way: ``error: MESSAGE`` on stderr, exit code 2, no traceback."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import pytest
from test_imports import MODULES

from megamythos.errors import UserError, run_cli


def error_classes() -> list[str]:
    """Dotted names of the ``...Error`` classes defined at the top level of megamythos modules."""
    return sorted(f"{module}.{node.name}" for module, path in MODULES.items()
                  for node in ast.parse(path.read_text()).body
                  if isinstance(node, ast.ClassDef) and node.name.endswith("Error"))


def test_error_classes_are_found():
    assert {"megamythos.model.config.ConfigError", "megamythos.data.blended_dataset.BlendError",
            "megamythos.data.index_cache.IndexCacheError"} <= set(error_classes())


@pytest.mark.parametrize("name", error_classes())
def test_every_error_is_a_user_error(name):
    module, _, cls = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), UserError)


def test_run_cli_reports_user_errors_in_one_line_and_lets_bugs_through(capsys):
    from megamythos.data.blended_dataset import BlendError

    def bad_input() -> int:
        raise BlendError("weights must be positive")

    assert run_cli(bad_input, log_format=None) == 2
    assert capsys.readouterr().err.splitlines() == ["error: weights must be positive"]
    assert run_cli(lambda: 0, log_format=None) == 0
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 // 0, log_format=None)


def test_a_reader_that_leaves_early_ends_a_command_quietly():
    """``inspect_dataset.py ... | head`` ended in a BrokenPipeError traceback (found 2026-12-06): a closed stdout
    now ends the command quietly with 141, as cat does."""
    script = ("import sys\nfrom megamythos.errors import run_cli\n"
              "def main():\n    for i in range(1000000):\n        print(i)\n    return 0\n"
              "sys.exit(run_cli(main))")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline() == b"0\n"
    child.stdout.close()  # the reader leaves, as head does
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == 141 and stderr == "", stderr
