"""The house's walls, checked from the source: imports point one way, rooms never import a command,
and an import inside a function says why it is there.

Read from the code with ``ast`` (nothing is imported). An import of ``icpcv.a.b`` from outside
package ``icpcv.a`` also runs ``icpcv/a/__init__.py``, so a cycle through a package's ``__init__``
is a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "icpcv"
COMMANDS = "icpcv.commands"


def _module_name(path: Path) -> str:
    parts = ["icpcv", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported icpcv module, line, inside a function) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names if a.name.startswith("icpcv"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("icpcv"):
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        out.append((sub if sub in known else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return out


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    """module -> the icpcv modules importing it runs. Importing ``icpcv.a.b`` also runs the packages
    ``icpcv.a`` (its ``__init__``), except those the importer is itself inside (they already run)."""
    mods = _modules()
    known = set(mods)
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        own = set(_ancestors(m)) | {m}
        for target, _, _ in _imports(path, known):
            while target not in known and "." in target:  # a name from a module, spelled as a module
                target = target.rsplit(".", 1)[0]
            for t in [target, *_ancestors(target)]:
                if t in known and t not in own:
                    graph[m].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_package_has_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_room_imports_a_command():
    graph = _graph()
    offenders = {m: sorted(t for t in targets if t == COMMANDS or t.startswith(COMMANDS + "."))
                 for m, targets in graph.items()
                 if not (m == COMMANDS or m.startswith(COMMANDS + ".") or m == "icpcv.__main__")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_imports_inside_functions_state_their_reason():
    """An import inside a function hides an arrow; it needs a ``# lazy: <reason>`` comment (on its
    line or the line above), e.g. start-up time or an optional heavy dependency."""
    mods = _modules()
    known = set(mods)
    missing = []
    for m, path in sorted(mods.items()):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    here = lines[inner.lineno - 1]
                    above = lines[inner.lineno - 2] if inner.lineno > 1 else ""
                    if "# lazy:" not in here and "# lazy:" not in above:
                        missing.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno}: {here.strip()}")
    assert missing == [], "\n".join(missing)
    assert known  # the package was found
