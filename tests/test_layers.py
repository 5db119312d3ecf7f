"""The package's imports follow the layers written in docs/extending.md: no cycle, no import of
a higher layer, every module placed. Imports inside functions count; ``if TYPE_CHECKING:`` ones
do not (they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "extending.md"


def layers() -> list[tuple[str, list[str]]]:
    """``[(layer, [module names])]`` from the ```layers block of docs/extending.md, top first."""
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"{DOC} has no ```layers block"
    out = []
    for line in block.group(1).splitlines():
        if line.strip():
            name, mods = line.split(":", 1)
            out.append((name.strip(), mods.split()))
    return out


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "dqecir").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``from pkg import sub`` names ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("dqecir") and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    """Index of the layer placing ``module`` (the longest matching name; ``dqecir`` alone
    places only the package's ``__init__``)."""
    best: tuple[int, int] | None = None
    for rank, (_, names) in enumerate(table):
        for n in names:
            if module == n or (n != "dqecir" and module.startswith(n + ".")):
                if best is None or len(n) > best[1]:
                    best = (rank, len(n))
    return None if best is None else best[0]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        colour[v] = 1
        stack.append(v)
        for w in sorted(g[v]):
            if colour.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in colour and (found := visit(w)):
                return found
        stack.pop()
        colour[v] = 2
        return None

    for v in sorted(g):
        if v not in colour and (found := visit(v)):
            return found
    return None


def test_every_module_has_a_layer():
    table = layers()
    unplaced = sorted(m for m in modules() if layer_of(m, table) is None)
    assert not unplaced, f"place these in the layers block of {DOC}: {unplaced}"


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_imports_go_down_the_layers_only():
    table = layers()
    wrong = []
    for module, deps in graph().items():
        mine = layer_of(module, table)
        for dep in sorted(deps):
            theirs = layer_of(dep, table)
            if mine is not None and theirs is not None and theirs < mine:
                wrong.append(f"{module} ({table[mine][0]}) imports {dep} ({table[theirs][0]})")
    assert not wrong, "\n".join(wrong)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The walker sees function-level and relative imports, skips TYPE_CHECKING, and the checks
    flag a cycle and an upward import."""
    known = {"dqecir.a": Path(), "dqecir.b": Path(), "dqecir.pkg": Path(), "dqecir.pkg.c": Path()}
    src = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dqecir.b\n"
        "def f():\n    from dqecir.pkg import c\n"
    )
    path = tmp_path / "a.py"
    path.write_text(src)
    assert imports("dqecir.a", path, known) == {"dqecir.pkg.c"}
    path.write_text("from . import b\nfrom .pkg import c\n")
    assert imports("dqecir.a", path, known) == {"dqecir.b", "dqecir.pkg.c"}
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
    table = [("top", ["dqecir.cli"]), ("bottom", ["dqecir", "dqecir.errors"])]
    assert layer_of("dqecir.cli", table) == 0 and layer_of("dqecir.errors", table) == 1
    assert layer_of("dqecir", table) == 1 and layer_of("dqecir.other", table) is None
