"""Modules import downwards: a module that is imported by another never imports it back,
not even inside a function (a cycle hidden in a function is still two modules that
cannot be read, tested or changed one without the other)."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict:
    mods = {}
    for p in (SRC / "scratchllm").rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict) -> set:
    """The scratchllm modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in mods else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    # A package's own __init__ is where its pieces are gathered, not a layer of its own.
    return {m for m in found if m in mods and m != name and not name.startswith(m + ".") and m != "scratchllm"}


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


@pytest.mark.parametrize("module", ["scratchllm.checkpoint", "scratchllm.hf", "scratchllm.files",
                                    "scratchllm.tokenizers.base", "scratchllm.tokenizers.bpe",
                                    "scratchllm.tokenizers.bpe_hf", "scratchllm.tokenizers.formats"])
def test_no_import_cycle_through(module):
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    back = sorted(m for m in graph[module] if _reaches(graph, m, module))
    assert not back, f"{module} imports {back}, which import it back"


def test_the_cycle_finder_sees_a_cycle_inside_a_function(tmp_path):
    """The check itself: an import inside a function counts."""
    mods = {"scratchllm.a": tmp_path / "a.py", "scratchllm.b": tmp_path / "b.py"}
    mods["scratchllm.a"].write_text("from .b import f\n")
    mods["scratchllm.b"].write_text("def f():\n    from .a import g\n")
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert _reaches(graph, "scratchllm.b", "scratchllm.a") and _reaches(graph, "scratchllm.a", "scratchllm.b")
