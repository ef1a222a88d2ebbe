"""Modules import downwards: a module that is imported by another never imports it back,
not even inside a function (a cycle hidden in a function is still two modules that
cannot be read, tested or changed one without the other).

Every module of the package is checked, so a module added later is checked too. The
imports are read from the source (ast): ``import``, ``from ... import`` (relative ones
resolved) and ``importlib.import_module("...")`` with a constant name, anywhere in the file.
"""
import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules(root: Path = SRC) -> dict:
    mods = {}
    for p in sorted((root / "scratchllm").rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _resolve(package: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``package``."""
    if not level:
        return module or ""
    up = package.split(".")[:len(package.split(".")) - level + 1]
    return ".".join(up + ([module] if module else []))


def _imports(name: str, path: Path, mods: dict) -> set:
    """The scratchllm modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(package, node.level, node.module)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in mods else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            target = node.args[0].value
            if target.startswith("."):
                dots = len(target) - len(target.lstrip("."))
                target = _resolve(package, dots, target[dots:] or None)
            found.add(target)
    # A package's own __init__ is where its pieces are gathered, not a layer of its own.
    return {m for m in found if m in mods and m != name and not name.startswith(m + ".") and m != "scratchllm"}


def _graph(mods: dict) -> dict:
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _reaches(graph: dict, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return False


def _cycle_through(graph: dict, module: str) -> list[str]:
    """A shortest import path module -> ... -> module, or [] if there is none (breadth first)."""
    parents, todo = {}, [module]
    while todo:
        nxt = []
        for m in todo:
            for t in sorted(graph[m]):
                if t == module:
                    path = [m]
                    while path[-1] != module:
                        path.append(parents[path[-1]])
                    return path[::-1] + [module]
                if t not in parents:
                    parents[t] = m
                    nxt.append(t)
        todo = nxt
    return []


MODULES = sorted(_modules())


@functools.lru_cache(maxsize=1)
def _package_graph() -> dict:
    """The package's import graph, read once for all the cases below."""
    return _graph(_modules())


def test_every_module_is_checked():
    """The list below is the package as it is on disk, the new modules included."""
    on_disk = {p for p in (SRC / "scratchllm").rglob("*.py")}
    assert set(_modules().values()) == on_disk and len(MODULES) > 50


@pytest.mark.parametrize("module", MODULES)
def test_no_import_cycle_through(module):
    cycle = _cycle_through(_package_graph(), module)
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_sees_a_cycle_inside_a_function(tmp_path):
    """The check itself: an import inside a function counts, relative or absolute, and by import_module."""
    for b_text in ("def f():\n    from .a import g\n", "def f():\n    import scratchllm.a\n",
                   "def f():\n    from . import a\n",
                   "import importlib\ndef f():\n    return importlib.import_module('.a', __package__)\n"):
        mods = {"scratchllm.a": tmp_path / "a.py", "scratchllm.b": tmp_path / "b.py"}
        mods["scratchllm.a"].write_text("from .b import f\n")
        mods["scratchllm.b"].write_text(b_text)
        graph = _graph(mods)
        assert _cycle_through(graph, "scratchllm.a") == ["scratchllm.a", "scratchllm.b", "scratchllm.a"], b_text
        assert _cycle_through(graph, "scratchllm.b") == ["scratchllm.b", "scratchllm.a", "scratchllm.b"], b_text


def test_the_cycle_finder_names_a_longer_cycle_and_passes_a_chain(tmp_path):
    names = ["scratchllm.p.a", "scratchllm.p.b", "scratchllm.p.c"]
    (tmp_path / "scratchllm" / "p").mkdir(parents=True)
    for n in ("__init__", "a", "b", "c"):
        (tmp_path / "scratchllm" / "p" / f"{n}.py").write_text("")
    (tmp_path / "scratchllm" / "__init__.py").write_text("")
    (tmp_path / "scratchllm" / "p" / "a.py").write_text("from .b import x\n")
    (tmp_path / "scratchllm" / "p" / "b.py").write_text("from scratchllm.p import c\n")
    (tmp_path / "scratchllm" / "p" / "c.py").write_text("")
    mods = _modules(tmp_path)
    assert set(names) <= set(mods)
    assert not any(_cycle_through(_graph(mods), m) for m in mods)  # a -> b -> c: a chain
    (tmp_path / "scratchllm" / "p" / "c.py").write_text("def f():\n    from ..p.a import y\n")
    graph = _graph(mods)
    assert _cycle_through(graph, "scratchllm.p.a") == names + ["scratchllm.p.a"]
