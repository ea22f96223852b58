"""The house rules of the layout: layers point one way, nothing below the command line imports it, no
two modules reach each other through any chain of imports (lazy imports inside functions count too),
and each package says in its first line what it holds."""
import ast
from pathlib import Path

import rapidpose

PACKAGE = Path(rapidpose.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The rapidpose modules a file imports anywhere in it (a package import counts as its __init__)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # rapidpose.x.y.name -> the module that holds it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_no_module_reaches_itself_through_its_imports():
    # the package's own __init__ re-exports its public names: importing from it is a shortcut, not a layer
    edges = {m: {t for t in ts if t != "rapidpose"} for m, ts in graph().items() if m != "rapidpose"}
    assert cycles(edges) == []


def test_nothing_outside_the_command_line_imports_it():
    offenders = {m: sorted(t for t in ts if t.startswith("rapidpose.cli")) for m, ts in graph().items()
                 if not m.startswith("rapidpose.cli") and m != "rapidpose.__main__"}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_the_checks_above_can_fail():
    """The walker sees lazy imports and circles (a guard against a test that cannot fail)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    code = "def f():\n    from .cli.predict import main\n"
    path = PACKAGE / "video" / "example.py"
    tree = ast.parse(code)
    assert any(isinstance(n, ast.ImportFrom) and n.level == 1 for n in ast.walk(tree))
    modules = {"rapidpose.cli.predict", "rapidpose.video.example", "rapidpose.video"}
    original = Path.read_text
    try:
        Path.read_text = lambda self, *a, **k: code if self == path else original(self, *a, **k)
        assert "rapidpose.cli.predict" not in imports_of(path, modules)  # `.cli` from video/: rapidpose.video.cli
        code = "def f():\n    from ..cli.predict import main\n"
        assert imports_of(path, modules) == {"rapidpose.cli.predict"}
    finally:
        Path.read_text = original


def test_every_package_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()[0]) > 10, f"{init.relative_to(PACKAGE.parent)} has no one-line docstring"
