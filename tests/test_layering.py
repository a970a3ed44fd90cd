"""The package's stages import only downwards: no circle, no upward edge, no hidden registry.

Each module sits on a floor (``FLOORS``); a module may import modules on its own floor
or lower, never higher. Imports inside functions count too (they are how ``--help``
stays fast, not a way around the layering). Read from the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "machine_monitor"

# Lowest first. A module matches the longest prefix listed (a package covers its modules).
FLOORS = [
    ["machine_monitor.errors", "machine_monitor.params"],
    ["machine_monitor.audio", "machine_monitor.features", "machine_monitor.synth", "machine_monitor.screening"],
    ["machine_monitor.autoencoder", "machine_monitor.training"],
    ["machine_monitor.scorers"],
    ["machine_monitor.threshold"],
    ["machine_monitor.persistence"],
    ["machine_monitor.detectors"],
    ["machine_monitor.filescore"],
    ["machine_monitor.scan", "machine_monitor.live", "machine_monitor.reports"],
    ["machine_monitor.service", "machine_monitor.dashboard"],
    # The package itself is a facade: `from machine_monitor import Detector` reaches down to detectors.
    ["machine_monitor", "machine_monitor.commands", "machine_monitor.cli", "machine_monitor.__main__"],
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> int:
    best, floor = -1, None
    for i, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, floor = len(name), i
    if floor is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__}")
    return floor


def imports_of(path: Path) -> set[str]:
    """Every machine_monitor module ``path`` imports (at any depth of the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("machine_monitor"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("machine_monitor"):
                continue
            # `from machine_monitor.x import y` may name a submodule y.
            for alias in node.names:
                candidate = f"{mod}.{alias.name}"
                sub = PACKAGE.parent / Path(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").is_file() or sub.is_dir() else mod)
    found.discard(me)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def upward_edges(graph: dict[str, set[str]], module: str) -> list[str]:
    mine = floor_of(module)
    return sorted(dep for dep in graph[module] if dep != "machine_monitor" and floor_of(dep) > mine)


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph.get(m, ())):
            if dep not in graph or dep == "machine_monitor":
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_floor():
    for m in MODULES:
        floor_of(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    upward = upward_edges(GRAPH, module)
    assert not upward, f"{module} (floor {floor_of(module)}) imports from higher floors: {upward}"


def test_there_is_no_import_circle():
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_checks_catch_an_upward_edge_and_a_circle():
    # A fake graph with both faults: persistence importing a detector, and back again.
    fake = {"machine_monitor.persistence": {"machine_monitor.detectors.base"},
            "machine_monitor.detectors.base": {"machine_monitor.persistence"}}
    assert upward_edges(fake, "machine_monitor.persistence") == ["machine_monitor.detectors.base"]
    assert find_circle(fake) == ["machine_monitor.detectors.base", "machine_monitor.persistence",
                                 "machine_monitor.detectors.base"]


def test_registries_are_explicit_tables_not_import_side_effects():
    # No module may fill a table when imported (e.g. a module-level SCORERS.update(...)).
    for m, p in MODULES.items():
        for node in ast.parse(p.read_text()).body:  # module level only
            call = node.value if isinstance(node, ast.Expr) else None
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                    isinstance(call.func.value, ast.Name) and call.func.value.id.isupper() and \
                    call.func.attr in ("update", "append", "extend", "setdefault", "add"):
                raise AssertionError(f"{m} fills {call.func.value.id} when imported")
