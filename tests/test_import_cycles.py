"""No import cycles in ``src/vprompt``, lazy or not: every ``import`` counts, at module level or inside a
function, and importing ``a.b.c`` also runs the packages ``a`` and ``a.b`` (except the importer's own, which
are running already; a name taken from one of them, ``from .. import x``, does count)."""

from __future__ import annotations

import ast
from pathlib import Path

import vprompt

ROOT = Path(vprompt.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module → the modules of the package that importing it (or calling its functions) runs."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        named = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                named.update(
                    f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names
                )
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = set()
        for target in named:
            parts = target.split(".")
            for i in range(1, len(parts)):  # the packages above the target
                name = ".".join(parts[:i])
                if name in files and name not in own and name != module:
                    edges.add(name)
            if target in files and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:
        start = min(group)
        path, seen = [start], {start: None}
        queue = [start]
        while queue:  # shortest way from start back to start inside the group
            node = queue.pop(0)
            for other in sorted(graph[node] & group):
                if other == start:
                    back = [node]
                    while seen[back[-1]] is not None:
                        back.append(seen[back[-1]])
                    path = [*reversed(back), start]
                    queue = []
                    break
                if other not in seen:
                    seen[other] = node
                    queue.append(other)
        found.append(path)
    return found


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_walk_finds_a_cycle_and_names_it(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .sub.b import g\n    return g\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "c.py").write_text("import pkg.sub.b\n")
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.sub", "pkg.sub.b"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    # a name taken from the package root, which imports the module back (the root -> engine case)
    (package / "sub" / "b.py").write_text("")
    (package / "__init__.py").write_text("VERSION = 1\nfrom . import a\n")
    (package / "a.py").write_text("def f():\n    from . import VERSION\n    return VERSION\n")
    assert cycles(import_graph(package)) == [["pkg", "pkg.a", "pkg"]]


def test_no_shared_code_branches_on_a_method_name():
    """What a method does differently it says itself (e.g. ``peft_type``, ``reference``): the model, the
    engine, the backbones and the tools never compare anything with a method's name."""
    from vprompt.methods import METHODS

    shared = [
        *(ROOT / "model").glob("*.py"),
        *(ROOT / "engine").glob("*.py"),
        *(ROOT / "backbones").rglob("*.py"),
        *(ROOT / "tools").glob("*.py"),
    ]
    shared += [ROOT / "methods" / "__init__.py", ROOT / "methods" / "base.py"]
    offenders = []
    for path in shared:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                named = [
                    c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in METHODS
                ]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n!r}" for n in named]
    assert not offenders, offenders
