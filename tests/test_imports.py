"""The package's import structure, read with ``ast`` (nothing is imported): no cycles among megamythos modules,
and layering rules of the form "these modules, and everything they import inside megamythos, import nothing
from those packages". Imports inside functions count like module-level ones: a lazy import still couples.

To add a rule, append a :class:`Rule` to ``RULES``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "megamythos"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


@dataclass(frozen=True)
class Rule:
    """``roots`` and every megamythos module they import, directly or transitively, import nothing whose
    dotted name is or starts with one of ``forbidden`` (a megamythos package or a third-party one)."""

    name: str
    roots: tuple[str, ...]  # modules or packages
    forbidden: tuple[str, ...]


# The layers, bottom to top: each imports only the layers before it (errors is the base of all; runtime, the
# process's settings, serves the trainer and the inference command lines alike).
LAYERS = ("errors", "runtime", "model", "data", "parallel", "planning", "hf", "checkpoint", "inference", "training",
          "research")
# ... except where a lower layer must not reach a layer below it either
RULES = [
    *(Rule(f"{layer} imports no layer above it", roots=(f"{PACKAGE}.{layer}",),
           forbidden=tuple(f"{PACKAGE}.{above}" for above in LAYERS[i + 1:]))
      for i, layer in enumerate(LAYERS)),
    Rule("the model and data know nothing DeepSpeed-shaped", roots=(f"{PACKAGE}.model", f"{PACKAGE}.data"),
         forbidden=("deepspeed",)),
    Rule("data is independent of the model", roots=(f"{PACKAGE}.data",), forbidden=(f"{PACKAGE}.model",)),
    Rule("inference is independent of the trainer and of planning",
         roots=(f"{PACKAGE}.inference",), forbidden=(f"{PACKAGE}.training", f"{PACKAGE}.planning")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports anywhere in its source, as absolute dotted names. ``from P import n``
    names the submodule ``P.n`` when it is one of ours, else ``P``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def internal(names: set[str]) -> set[str]:
    return {name for name in names if name in MODULES}


def under(prefix: str) -> list[str]:
    """The module ``prefix`` and, when it is a package, every module inside it."""
    return [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]


def closure(roots: tuple[str, ...]) -> set[str]:
    """``roots`` (modules or packages) and every megamythos module they reach, with the packages whose
    ``__init__`` runs on the way."""
    seen: set[str] = set()
    todo = [module for root in roots for module in under(root)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        todo.extend(internal(GRAPH[module]) | internal(parents))
    return seen


def find_cycle() -> list[str] | None:
    """One import cycle among megamythos modules as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(internal(GRAPH[module])):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(MODULES):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_sees_the_package():
    assert {"megamythos.inference.evaluate", "megamythos.training.pretrain",
            "megamythos.data.pretraining"} <= set(MODULES)
    assert "megamythos.data.pretraining" in GRAPH["megamythos.inference.evaluate"]
    assert "megamythos.training.arguments" in GRAPH["megamythos.training.pretrain"]
    assert "deepspeed" in GRAPH["megamythos.training.pretrain"]  # function-level imports count


def test_no_import_cycles():
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_layering_rule(rule):
    for root in rule.roots:
        assert under(root), f"rule {rule.name!r} names unknown module {root}"
    violations = sorted(f"{module} imports {name}" for module in closure(rule.roots) for name in GRAPH[module]
                        if any(name == f or name.startswith(f + ".") for f in rule.forbidden))
    assert not violations, f"{rule.name}:\n" + "\n".join(violations)


def test_every_module_lives_in_the_folder_of_its_layer():
    """Outside the package's ``__init__``, only the base module ``errors`` sits at the top; every other module is
    in one of the layer folders the rules above name."""
    top = {path.name for path in MODULES.values() if path.parent == ROOT} - {"__init__.py"}
    assert top == {"errors.py"}, sorted(top)
    folders = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert folders <= set(LAYERS), sorted(folders - set(LAYERS))
