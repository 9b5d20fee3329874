"""Shared fixtures. Plain helpers and constants are in helpers.py.

Session-scoped fixtures hold read-only data built once per test session: the small default corpus, a tiny BPE
tokenizer, and one tiny trained checkpoint. A test that uses a fixture which trains (``LAUNCH_FIXTURES``) starts a
real launch and must carry the ``launch`` marker (checked at collection; such fixtures are registered with
``helpers.trains``).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from megamythos.data.tokenizer import Tokenizer, TokenizerTrainConfig, train_tokenizer
from tests.helpers import LAUNCH_FIXTURES, LaunchPool, build_corpus, run, synthetic_documents, tiny_args, trains

TINY_RUN_ITERS = 8


# The longest files, longest first (`make test`, 2026-12-06: 100-270 s each in two workers; the next is under
# 50 s): pytest-xdist hands whole files to its workers in collection order, so these go first and the short ones
# fill the gaps; in alphabetical order test_train.py ran last, alone.
LONGEST_FILES = ("test_faults.py", "test_distributed_train.py", "test_train.py", "test_integrity.py",
                 "test_elastic.py", "test_launcher.py")


def uses_a_launch(item: pytest.Item) -> bool:
    """Whether one of the fixtures ``item`` uses (directly or through others) is registered with ``helpers.trains``:
    of each name, the definition that serves it (the last of those that override one another)."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs[-1].func in LAUNCH_FIXTURES for defs in info.name2fixturedefs.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses a fixture registered with ``helpers.trains`` carries the ``launch`` marker; the
    ``LONGEST_FILES`` come first (a stable sort: each file's tests stay together, in their order)."""
    unmarked = [item.nodeid for item in items if uses_a_launch(item) and item.get_closest_marker("launch") is None]
    if unmarked:
        names = sorted(fixture.__name__ for fixture in LAUNCH_FIXTURES)
        raise pytest.UsageError(f"tests using a fixture that trains ({', '.join(names)}) need @pytest.mark.launch: "
                                f"{unmarked}")
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' corpus (``helpers.CORPUS_ARCHIVE``: 30 stdlib files, vocab 384) for ``tiny_args``, built once."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A 400-piece BPE model trained on synthetic text (about a second)."""
    prefix = tmp_path_factory.mktemp("tok") / "tiny"
    return train_tokenizer(synthetic_documents(400, seed=1),
                           TokenizerTrainConfig(vocab_size=400, model_prefix=str(prefix), num_threads=1))


@pytest.fixture(scope="session")
def launches() -> Iterator[LaunchPool]:
    """Background trainer launches, two at a time (helpers.LaunchPool): a module submits its independent runs at
    once and each fixture waits for its own."""
    pool = LaunchPool(slots=2)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
@trains
def tiny_run_started(tmp_path_factory: pytest.TempPathFactory, corpus: Path, launches: LaunchPool) -> Path:
    """Queues ``tiny_run`` in ``launches`` (a module that also starts runs of its own asks for this first, so the
    shared run goes first); returns its directory, finished or not."""
    out = tmp_path_factory.mktemp("tiny_run")
    launches.submit("tiny_run", run, 1, [
        *tiny_args(corpus, TINY_RUN_ITERS), "--zero", "0", "--micro-batch-size", "2", "--global-batch-size", "2",
        "--save", str(out / "ckpt"), "--save-interval", "2", "--keep-last", "4",
        "--metrics-file", str(out / "metrics.jsonl"), "--tensorboard-dir", str(out / "tb"), "--log-params-norm"],
        out / "log.txt")
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_run_started: Path, launches: LaunchPool) -> Path:
    """One launch of the tiny model, shared by every test that needs a trained checkpoint: 1 process, ZeRO-0,
    micro batch 2 = global batch 2, 8 iterations, a checkpoint every 2 (the last 4 kept: iter_0000002 ...
    iter_0000008), ``--log-params-norm``. Returns the run directory: ckpt/, metrics.jsonl, tb/, log.txt. Read-only
    for its users."""
    launches.result("tiny_run")
    return tiny_run_started


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path, corpus: Path) -> tuple[Path, Path]:
    """(checkpoint --save dir of ``tiny_run``, corpus dir)."""
    return tiny_run / "ckpt", corpus
