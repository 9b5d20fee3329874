"""Where the files the command lines read and write by default are: in a checkout of the repository, or beside an
installed package.

From a checkout (``PYTHONPATH=REPO``, ``pip install -e .``) the defaults are the repository's, whatever the working
directory: the ``ds_configs/`` templates, the embedded corpus in ``data/default``, the launcher's run folders in
``runs/``, DeepSpeed's JIT-built ops in ``.torch_extensions``. From an installed wheel (``pip install .``, a cluster's
shared environment) the package's directory is no place to write: the templates are the copy of ``ds_configs/``
that the wheel carries as package data (``megamythos/ds_configs``), outputs go under the working directory
(``data/default``, ``runs/tiny``, as relative paths), and JIT-built ops where torch keeps them by default.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
# The repository root when the package is imported from a checkout; None in an installed package (whose parent,
# site-packages, holds no setup.py beside ds_configs/).
CHECKOUT: Path | None = _ROOT if (_ROOT / "setup.py").is_file() and (_ROOT / "ds_configs").is_dir() else None
# The folder default outputs go under: the checkout, else the working directory (a relative path).
WORKSPACE = CHECKOUT or Path()
# The DeepSpeed JSON templates. pip installs a wheel unpacked, so the package data is a directory on disk whose path
# the launcher can hand to the ranks.
DS_CONFIGS = CHECKOUT / "ds_configs" if CHECKOUT else Path(str(resources.files("megamythos") / "ds_configs"))
# The trainer's template when none is given, and the CPU run's in the launcher
DEFAULT_DS_CONFIG = DS_CONFIGS / "cpu-debug.json"
