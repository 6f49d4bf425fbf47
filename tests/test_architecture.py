"""The package import graph follows the README's layer order: no cycle, no upward import, no private names
crossing modules. Read from the source with ``ast`` (nothing is imported), so it also sees imports inside
functions."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "medseg"

# Lowest first; a unit may import only units of its own layer or a lower one. Keep in sync with the README's
# "Architecture" section.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "runtime", "colours", "morphology"},
    {"io"},
    {"data"},
    {"plan"},
    {"preprocess"},
    {"augment"},
    {"models"},
    {"losses"},
    {"bundle"},
    {"evaluate"},
    {"postprocess"},
    {"infer"},
    {"train"},
    {"report"},
    {"export"},
    {"serve"},
    {"pacs"},
    {"demo"},
    {"cli", "__main__"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = ["medseg", *path.relative_to(SOURCE).with_suffix("").parts]
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage (``medseg.io.dicom`` -> ``io``) or top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported medseg module, names taken from it, line) for every import statement of a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("medseg")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("medseg"):
                found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


MODULES = _modules()
EDGES = [(module, target, names, line) for module, path in MODULES.items()
         for target, names, line in _imports(module, path)]


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES}
    assert units - set(LAYER_OF) == set(), "add new packages to LAYERS and to the README's architecture section"


def test_no_unit_imports_a_higher_one():
    upward = [f"{MODULES[m].relative_to(SOURCE)}:{line} imports {t} ({_unit(m)} is below {_unit(t)})"
              for m, t, _, line in EDGES if LAYER_OF[_unit(t)] > LAYER_OF[_unit(m)]]
    assert upward == []


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, target, names, _ in EDGES:
        # `from medseg.io import dicom` names a module: the edge goes to it, not to the package
        for name in names or [""]:
            candidate = f"{target}.{name}" if name else target
            graph[module].add(candidate if candidate in MODULES else target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in MODULES:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    cycles = [cycle for node in sorted(graph) if node not in state and (cycle := visit(node))]
    # a package's __init__ re-exporting its submodules is not a cycle of design; count only cycles between files
    # that are not the package/submodule pair
    real = [c for c in cycles if not all(a.startswith(b) or b.startswith(a) for a, b in zip(c, c[1:]))]
    assert real == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{MODULES[m].relative_to(SOURCE)}:{line} takes {name} from {t}"
               for m, t, names, line in EDGES if t != m for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_no_source_file_is_over_400_lines():
    long = {str(path.relative_to(SOURCE)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}, "split these by responsibility"
