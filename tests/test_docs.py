"""The documents name tests as evidence (docs/faults.md: ``tests/FILE.py::test_name``, then ``::other`` of the same
file): each named file and test must exist, so a renamed test file or test does not leave the docs pointing nowhere.
So must the modules and library names they give (README's layout table, the Hugging Face export's module list,
``megamythos.x.y`` names). Their commands: tests/test_doc_commands.py."""
from __future__ import annotations

import importlib
import re

from tests.helpers import DOCS, REPO

# `tests/FILE.py::NAME`, `tests/FILE.py` or `::NAME` (a test of the file named last before it)
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def test_every_test_the_docs_name_exists() -> None:
    missing = []
    for doc in DOCS:
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


def test_the_readme_layout_table_lists_every_module_of_each_layer():
    """README's "Layout of the package" names each layer's modules: every one of them exists, and no module of the
    layer is left out. Found 2026-12-07: it still named `padding` a day after that module became `row_layout`."""
    table = re.findall(r"^\| `(\w+)/` \| ((?:`\w+`(?: · )?)+) \|", (REPO / "README.md").read_text(), re.MULTILINE)
    assert len(table) >= 10, table
    for layer, cell in table:
        listed = set(re.findall(r"`(\w+)`", cell))
        present = {p.stem for p in (REPO / "megamythos" / layer).glob("*.py")} - {"__init__"}
        assert listed == present, (layer, sorted(listed - present), sorted(present - listed))


def test_inference_md_names_the_modules_a_hugging_face_export_ships():
    """docs/inference.md lists the library modules an `--format hf` export carries; it is what the export ships."""
    from megamythos.hf.export import ENTRY_MODULES, shipped_sources

    text = " ".join((REPO / "docs" / "inference.md").read_text().split())
    listed = re.search(r"the library modules they import \(([^)]*)\)", text).group(1)
    wrappers = {module.rsplit(".", 1)[1] + ".py" for module in ENTRY_MODULES}
    assert set(re.findall(r"`(\w+\.py)`", listed)) == set(shipped_sources()) - wrappers


def resolves(name: str) -> bool:
    """Whether ``name`` (``megamythos.pkg.module.attr...``) is a module or an attribute reached from one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_every_library_name_the_docs_give_exists():
    """A module or function the docs name (``megamythos.data.sampler.PretrainingSampler``) is there to import; a
    name the text calls "former" is history."""
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for found in re.finditer(r"\bmegamythos(?:\.\w+)+", text):
            if "former" not in text[max(0, found.start() - 10):found.start()] and not resolves(found.group()):
                missing.append(f"{doc.name}: {found.group()}")
    assert missing == []
