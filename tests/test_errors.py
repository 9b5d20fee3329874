"""Every user-facing error derives from :class:`megamythos.errors.UserError`, and every command line reports it
the same way: ``error: MESSAGE`` on stderr, exit code 2, no traceback."""
from __future__ import annotations

import ast
import importlib
import logging

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


def test_run_cli_reports_user_errors_in_one_line_and_lets_bugs_through(capsys, monkeypatch):
    from megamythos.data.blended_dataset import BlendError

    def bad_input() -> int:
        raise BlendError("weights must be positive")

    logger = logging.getLogger("test_errors")
    monkeypatch.setattr(logger, "propagate", False)  # a log without a handler: Python's last resort would print it
    assert run_cli(bad_input, log_format=None, logger=logger) == 2
    assert capsys.readouterr().err.splitlines() == ["error: weights must be positive"]
    assert run_cli(lambda: 0, log_format=None) == 0
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 // 0, log_format=None)
