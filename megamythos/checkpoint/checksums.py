"""Checksums of a checkpoint tag, a universal checkpoint or an export: ``checksums.json`` in that directory.

    {"algorithm": "sha256", "files": {"mp_rank_00_model_states.pt": {"size": 25173, "sha256": "9f2c..."}, ...}}

It lists every regular file under the directory (relative POSIX paths) when it is written, except itself; it is
written last, once the directory is complete. A listed file that is missing, or has another size or sha256, is
refused by name (:class:`ChecksumError`), as is a file of its top level of a kind a loader reads that it does
not list (:mod:`megamythos.data.manifest`, which reads and checks a manifest); other files (a README) and files
added later in subdirectories (``eval/`` of an older ``megamythos.inference.evaluate``) are not checked. sha256
(about 1 GB/s on one core with SHA extensions; measured in bench/README.md) is computed in 1 MiB chunks, one file
after the other; a :class:`Team` of ranks shares the files out, each hashing its own.
"""
from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megamythos.checkpoint.files import (
    LATEST,
    TAG_RE,
    TRAIN_RECORD,
    CheckpointError,
    check_tag_files,
    complete_tags,
    read_train_record,
    tags_by_iteration,
    write_atomic,
)
from megamythos.data.manifest import (
    ALGORITHM,
    CHECKSUMS_FILE,
    file_sha256,
    first_problem,
    read_manifest,
    unlisted_file,
)

logger = logging.getLogger(__name__)

CHECKSUMMED_KEY = "checksummed"  # true in the train record of every tag saved with a manifest


class ChecksumError(CheckpointError):
    """A file of a checksummed directory is missing or differs from its ``checksums.json``."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path


def _listed_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` but the manifest, sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def _alone(value: Any) -> list[Any]:
    return [value]


@dataclass(frozen=True)
class Team:
    """The processes that share the hashing of one directory: this one is ``rank`` of ``size``, and ``gather`` is
    a collective that returns every rank's value in rank order. Each rank hashes its share (:func:`shares`), so a
    checkpoint of B bytes costs B / size per rank instead of B on rank 0 (a 1T-parameter ZeRO checkpoint holds
    about 14 TB). The default is one process alone; every rank of a team must make the same calls."""

    rank: int = 0
    size: int = 1
    gather: Callable[[Any], list[Any]] = _alone

    def share(self, read: Callable[[], Any]) -> Any:
        """``read()`` on rank 0, its value on every rank, and an OSError it raises raised on every rank. Only rank
        0 reads the directory: on a network file system another node's view of a listing may lag behind, and
        every rank must see the same files."""
        value = None
        if self.rank == 0:
            try:
                value = read()
            except OSError as err:
                value = err
        value = self.gather(value)[0]
        _raise_any([value])
        return value


ALONE = Team()


def shares(sizes: dict[str, int], size: int) -> list[list[str]]:
    """The files (name -> bytes) each of ``size`` ranks hashes: largest first, each to the rank with the fewest
    bytes so far (ties: the lowest rank), so no rank holds more than total / size + the largest file. Every rank
    computes the same lists from the same sizes."""
    loads = [(0, rank) for rank in range(size)]
    out: list[list[str]] = [[] for _ in range(size)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        load, rank = heapq.heappop(loads)
        out[rank].append(name)
        heapq.heappush(loads, (load + sizes[name], rank))
    return out


def _raise_any(parts: list[Any]) -> None:
    """Raise the first OSError a rank returned instead of its part (on every rank alike)."""
    failed = next((part for part in parts if isinstance(part, OSError)), None)
    if failed is not None:
        raise failed


def write_checksums(directory: Path, team: Team = ALONE) -> dict[str, Any] | None:
    """Hash every file under ``directory`` and write ``directory/checksums.json`` atomically.

    Collective over ``team``: rank 0 lists the files, each rank hashes its share, rank 0 writes the manifest and
    returns it (the other ranks return None). An OSError on any rank is raised on every rank."""
    sizes = team.share(lambda: {p.relative_to(directory).as_posix(): p.stat().st_size
                                for p in _listed_files(directory)})
    try:
        part: dict[str, str] | OSError = {name: file_sha256(directory / name)
                                          for name in shares(sizes, team.size)[team.rank]}
    except OSError as err:
        part = err
    parts = team.gather(part)
    _raise_any(parts)
    if team.rank != 0:
        return None
    digests = {name: digest for part in parts for name, digest in part.items()}
    manifest = {"algorithm": ALGORITHM,
                "files": {name: {"size": sizes[name], ALGORITHM: digests[name]} for name in sorted(sizes)}}
    write_atomic(directory / CHECKSUMS_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def finished_save(tag_dir: Path) -> bool:
    """Whether checkpoint tag ``tag_dir`` is what a save that finished left: its manifest lists every shard
    (``*.pt``) it holds and every file it lists is there (a killed save has no manifest, or stray shards of
    another run's ranks)."""
    listed = read_manifest(tag_dir / CHECKSUMS_FILE)
    return (isinstance(listed, dict) and all((tag_dir / name).is_file() for name in listed)
            and {p.name for p in tag_dir.glob("*.pt")} <= set(listed))


def manifest_bytes(tag_dir: Path) -> int:
    """The bytes of the files ``tag_dir``'s manifest lists (0 without a readable one)."""
    listed = read_manifest(tag_dir / CHECKSUMS_FILE)
    return sum(entry["size"] for entry in listed.values()) if isinstance(listed, dict) else 0


def incomplete(tag_dir: Path) -> bool:
    """Whether checkpoint tag ``tag_dir`` has lost files it was saved with (a tag being removed, for one): the tag
    itself, a file its manifest lists, or the manifest where its train record says it had one."""
    if not tag_dir.is_dir():
        return True
    listed = read_manifest(tag_dir / CHECKSUMS_FILE)
    if isinstance(listed, dict):
        return any(not (tag_dir / name).is_file() for name in listed)
    try:
        return listed is None and bool(read_train_record(tag_dir).get(CHECKSUMMED_KEY))
    except CheckpointError:  # a damaged train record: damage, which its reader reports, not a removal
        return False


def verify_checksums(directory: Path, team: Team = ALONE) -> bool:
    """Check ``directory`` against ``directory/checksums.json``: no file a loader reads left out of it, then
    every file it lists (sizes first, then hashes); False when there is no manifest. Raises :class:`ChecksumError`
    for an unlisted file, or the first listed file, in path order, that is missing or differs.

    Collective over ``team``: rank 0 reads the manifest and lists the directory, each rank checks its share, every
    rank returns or raises alike."""
    path = directory / CHECKSUMS_FILE
    listed = team.share(lambda: read_manifest(path))
    if listed is None:
        return False
    if isinstance(listed, str):
        raise ChecksumError(path, listed)
    stray = team.share(lambda: unlisted_file(directory, listed))
    if stray is not None:
        raise ChecksumError(directory / stray[0], stray[1])
    mine = shares({name: entry["size"] for name, entry in listed.items()}, team.size)[team.rank]
    for hashes in (False, True):
        problems = [p for p in team.gather(first_problem(directory, mine, listed, hashes)) if p is not None]
        if problems:
            name, problem = min(problems)
            raise ChecksumError(directory / name, problem)
    return True


def verified(directory: Path, team: Team = ALONE) -> bool:
    """Whether ``directory`` has a manifest and every file it lists matches (collective over ``team``)."""
    try:
        return verify_checksums(directory, team)
    except ChecksumError:
        return False


def newest_verified_tag(save_dir: Path, exclude: str, team: Team = ALONE) -> str | None:
    """The newest ``iter_*`` tag of ``save_dir`` other than ``exclude`` whose checksums verify (None: none does);
    collective over ``team``."""
    tags = team.share(lambda: [name for _, name in reversed(tags_by_iteration(save_dir)) if name != exclude])
    return next((tag for tag in tags if verified(save_dir / tag, team)), None)


def verify_tag(tag_dir: Path, team: Team = ALONE) -> None:
    """Refuse a checkpoint tag whose files differ from its checksums, in one line naming the file and the newest
    other tag of its directory that verifies (collective over ``team``: every rank raises alike). A tag without a
    manifest is refused the same way when its ``train_args.json`` says it was saved with one
    (:data:`CHECKSUMMED_KEY`); one saved before checksums existed is accepted with a warning once its torch files
    are complete archives (:func:`check_tag_files`, on rank 0)."""
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir} does not exist")
    try:
        if verify_checksums(tag_dir, team):
            return
    except ChecksumError as err:
        raise CheckpointError(f"{err}; {_remedy(tag_dir, team)}, or restore {err.path.name} from another copy of "
                              "the checkpoint") from err
    saved_with, problem = team.share(lambda: _unverified_tag_problem(tag_dir))
    if saved_with is not None:
        raise CheckpointError(f"{tag_dir / CHECKSUMS_FILE} is missing, though {tag_dir.name} was saved with it "
                              f"({saved_with}), so its files cannot be verified; {_remedy(tag_dir, team)}, or "
                              "restore the tag from another copy of the checkpoint")
    if problem is not None:
        raise CheckpointError(problem)


def _remedy(tag_dir: Path, team: Team) -> str:
    """Where to resume instead of ``tag_dir``: the newest other tag of its directory that verifies."""
    good = newest_verified_tag(tag_dir.parent, tag_dir.name, team)
    return (f"the newest tag that verifies is {good} ({tag_dir.parent / good}; to resume it, write {good} into "
            f"{tag_dir.parent / LATEST})" if good else f"no other tag of {tag_dir.parent} verifies")


def _saved_with_manifest(tag_dir: Path) -> str | None:
    """Why ``tag_dir``, which holds no manifest, was saved with one, or None (a tag saved before checksums existed):
    its train record says so (:data:`CHECKSUMMED_KEY`), or an older tag of its directory holds one, since a run
    saves its tags in order and every save since checksums exist writes one (a tag copied in part: ``rsync``,
    ``cp`` or ``tar`` cut off before its ``checksums.json`` and ``train_args.json``)."""
    if read_train_record(tag_dir).get(CHECKSUMMED_KEY):
        return f"{TRAIN_RECORD}: {CHECKSUMMED_KEY}"
    match = TAG_RE.match(tag_dir.name)
    older = [name for i, name in complete_tags(tag_dir.parent) if match and i < int(match.group(1))]
    return f"the older {older[-1]} of its run holds one: a copy cut off, or a save that did not finish" if older \
        else None


def _unverified_tag_problem(tag_dir: Path) -> tuple[str | None, str | None]:
    """For ``tag_dir`` without a manifest: (why it was saved with one (:func:`_saved_with_manifest`), None); else
    warn that it (saved before checksums existed) is not verified and give (None, what :func:`check_tag_files` finds
    wrong with its torch files, or None)."""
    try:
        saved_with = _saved_with_manifest(tag_dir)
    except CheckpointError as err:
        return None, str(err)
    if saved_with is not None:
        return saved_with, None
    logger.warning("%s has no %s (saved before checkpoints carried checksums): its files are not verified",
                   tag_dir, CHECKSUMS_FILE)
    try:
        check_tag_files(tag_dir)
    except CheckpointError as err:
        return None, str(err)
    return None, None
