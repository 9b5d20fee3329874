"""The documents name tests as evidence (docs/faults.md: ``tests/FILE.py::test_name``, then ``::other`` of the same
file): each named file and test must exist, so a renamed test file or test does not leave the docs pointing nowhere."""
from __future__ import annotations

import re

from tests.helpers import REPO

# `tests/FILE.py::NAME`, `tests/FILE.py` or `::NAME` (a test of the file named last before it)
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def test_every_test_the_docs_name_exists() -> None:
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        last = None
        for tested, name in REFERENCE.findall(doc.read_text()):
            path = last = tested or last
            if path is None:
                continue
            if not (REPO / path).is_file():
                missing.append(f"{doc.name}: {path}")
            elif name and not re.search(rf"^\s*def {name}\b", (REPO / path).read_text(), re.MULTILINE):
                missing.append(f"{doc.name}: {path}::{name}")
    assert not missing, sorted(set(missing))
