"""Checksums of a checkpoint tag, a universal checkpoint or an export: ``checksums.json`` in that directory.

    {"algorithm": "sha256", "files": {"mp_rank_00_model_states.pt": {"size": 25173, "sha256": "9f2c..."}, ...}}

It lists every regular file under the directory (relative POSIX paths) when it is written, except itself; it is
written last, once the directory is complete. A listed file that is missing, or has another size or sha256, is
refused by name (:class:`ChecksumError`); files added later (``eval/`` of ``megamythos.inference.evaluate``) are
not checked. sha256 (about 1 GB/s on one core with SHA extensions; measured in bench/README.md) is computed in
1 MiB chunks, one file after the other.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from megamythos.checkpoint.files import LATEST, TAG_RE, CheckpointError, check_tag_files, write_atomic

logger = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "sha256"
_CHUNK = 1 << 20


class ChecksumError(CheckpointError):
    """A file of a checksummed directory is missing or differs from its ``checksums.json``."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` but the manifest, sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def write_checksums(directory: Path) -> dict[str, Any]:
    """Hash every file under ``directory`` and write ``directory/checksums.json`` atomically; returns it."""
    manifest = {"algorithm": ALGORITHM, "files": {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, ALGORITHM: file_sha256(p)}
        for p in _listed_files(directory)}}
    write_atomic(directory / CHECKSUMS_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_checksums(directory: Path) -> bool:
    """Check every file ``directory/checksums.json`` lists (sizes first, then hashes); False when there is no
    manifest. Raises :class:`ChecksumError` for the first file, in path order, that is missing or differs."""
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
        listed = {directory / name: entry for name, entry in manifest["files"].items()}
        if manifest["algorithm"] != ALGORITHM:
            raise ValueError(f"algorithm {manifest['algorithm']!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ChecksumError(path, f"is corrupt ({err})") from err
    for file, entry in listed.items():
        if not file.is_file():
            raise ChecksumError(file, f"is missing (listed in {path})")
        if file.stat().st_size != entry["size"]:
            raise ChecksumError(file, f"is corrupt: {file.stat().st_size} bytes, {entry['size']} when saved")
    for file, entry in listed.items():
        if file_sha256(file) != entry[ALGORITHM]:
            raise ChecksumError(file, f"is corrupt: its {ALGORITHM} differs from {path}")
    return True


def verified(directory: Path) -> bool:
    """Whether ``directory`` has a manifest and every file it lists matches."""
    try:
        return verify_checksums(directory)
    except ChecksumError:
        return False


def newest_verified_tag(save_dir: Path, exclude: str) -> str | None:
    """The newest ``iter_*`` tag of ``save_dir`` other than ``exclude`` whose checksums verify (None: none does)."""
    tags = sorted((p.name for p in save_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name) and p.name != exclude),
                  key=lambda name: int(TAG_RE.match(name).group(1)), reverse=True)
    return next((tag for tag in tags if verified(save_dir / tag)), None)


def verify_tag(tag_dir: Path) -> None:
    """Refuse a checkpoint tag whose files differ from its checksums, in one line naming the file and the newest
    other tag of its directory that verifies. A tag saved before checksums existed has no manifest: it is
    accepted with a warning once its torch files are complete archives (:func:`check_tag_files`)."""
    try:
        if verify_checksums(tag_dir):
            return
    except ChecksumError as err:
        good = newest_verified_tag(tag_dir.parent, exclude=tag_dir.name)
        remedy = (f"the newest tag that verifies is {good} ({tag_dir.parent / good}; to resume it, write {good} "
                  f"into {tag_dir.parent / LATEST})" if good else f"no other tag of {tag_dir.parent} verifies")
        raise CheckpointError(f"{err}; {remedy}, or restore {err.path.name} from another copy of the "
                              "checkpoint") from err
    logger.warning("%s has no %s (saved before checkpoints carried checksums): its files are not verified",
                   tag_dir, CHECKSUMS_FILE)
    check_tag_files(tag_dir)
