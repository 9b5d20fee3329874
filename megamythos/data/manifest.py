"""Reading and checking a directory's ``checksums.json`` (:mod:`megamythos.checkpoint.checksums` writes it for
checkpoint tags and exports), with the standard library and :mod:`megamythos.errors` alone: the Hugging Face
export ships this module beside its modeling code, whose ``from_pretrained`` checks the export's files with
:func:`verify_directory`.

    {"algorithm": "sha256", "files": {"model.safetensors": {"size": 25173, "sha256": "9f2c..."}, ...}}

Every file of the directory's top level of a kind a loader reads (:data:`READ_SUFFIXES`) must be listed: one put
beside the checked files, or one whose entry was dropped, is refused as unlisted. Other files (a ``README.md``
model card, ``.gitattributes``, a file manager's ``.DS_Store``) and files in subdirectories (results added later,
``eval/``) are not checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from megamythos.errors import UserError

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "sha256"
_CHUNK = 1 << 20
# what checkpoint and export loaders read: torch archives, JSON records and configs (a PEFT adapter_config.json
# too, which transformers loads when it finds one), weights, SentencePiece models, modeling code
READ_SUFFIXES = (".pt", ".json", ".safetensors", ".model", ".py")


class ManifestError(UserError, ValueError):
    """A file of a directory is missing, differs from its ``checksums.json``, or is not listed there."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path, self.problem = path, problem


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | str | None:
    """The files ``path`` lists (name -> {"size", ALGORITHM}), None when there is no manifest, or what is wrong
    with it (plain data: it travels between ranks)."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest["algorithm"] != ALGORITHM:
            raise ValueError(f"algorithm {manifest['algorithm']!r}")
        return {name: {"size": int(entry["size"]), ALGORITHM: str(entry[ALGORITHM])}
                for name, entry in manifest["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"is corrupt ({err})"


def unlisted_file(directory: Path, listed: dict[str, Any]) -> tuple[str, str] | None:
    """(name, problem) of the first file of ``directory``'s top level, in name order, of a kind a loader reads
    (:data:`READ_SUFFIXES`, not hidden) that ``listed`` leaves out (the manifest itself aside); None also when
    ``directory`` is gone (its listed files are then reported missing)."""
    if not directory.is_dir():
        return None
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix in READ_SUFFIXES
                   and not p.name.startswith(".") and p.name not in listed)
    stray = next((name for name in names if name != CHECKSUMS_FILE), None)
    return None if stray is None else (stray, f"is not listed in {directory / CHECKSUMS_FILE}, so it cannot be "
                                              "verified (put there after the save, or its entry was removed): move "
                                              f"it out of {directory} if it does not belong there")


def first_problem(directory: Path, names: list[str], listed: dict[str, Any], hashes: bool) -> tuple[str, str] | None:
    """(name, problem) of the first of ``names``, in path order, that is missing, cannot be read (an I/O error, no
    permission: a problem like the others, so that the ranks sharing a check all refuse it alike) or has another
    size (``hashes``: another sha256) than ``listed`` says."""
    manifest = directory / CHECKSUMS_FILE
    for name in sorted(names):
        file, entry = directory / name, listed[name]
        try:
            if not hashes and not file.is_file():
                return name, f"is missing (listed in {manifest})"
            if not hashes and file.stat().st_size != entry["size"]:
                return name, f"is corrupt: {file.stat().st_size} bytes, {entry['size']} when saved"
            if hashes and file_sha256(file) != entry[ALGORITHM]:
                return name, f"is corrupt: its {ALGORITHM} differs from {manifest}"
        except OSError as err:
            return name, f"cannot be read ({err.strerror or err})"
    return None


def verify_directory(directory: Path) -> bool:
    """Check ``directory`` against its ``checksums.json`` in this process: no unlisted file, then every listed
    file's size, then its sha256; False when there is no manifest. Raises :class:`ManifestError` for the first
    problem."""
    path = directory / CHECKSUMS_FILE
    listed = read_manifest(path)
    if listed is None:
        return False
    if isinstance(listed, str):
        raise ManifestError(path, listed)
    problem = (unlisted_file(directory, listed) or first_problem(directory, list(listed), listed, False)
               or first_problem(directory, list(listed), listed, True))
    if problem is not None:
        raise ManifestError(directory / problem[0], problem[1])
    return True
