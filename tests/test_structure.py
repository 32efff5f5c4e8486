"""The package's shape: imports among skillforge modules form no circle and only point down the layers.

The import graph is read from the source with ast (module-level and function-level imports alike, since
a lazy import is still a dependency), so a circle or an upward import fails here, not at some later
import order. Importing `a.b.c` also runs the `__init__` of `a.b`, so that counts as an edge too (except
into a package that contains the importing module, whose `__init__` is already running).

Layers, lowest first; a module may import its own group or a group of a strictly lower rank. Peers of
one rank import neither way: compile and the runtime share the prompt contract and the sensitivity
measure (below both) and nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "skillforge"

RANKS = {
    "errors": 0,
    "config": 1, "refs": 1,
    "manifest_io": 2, "prompt": 2, "rope": 2, "model": 2, "store": 2,
    "manifest": 3, "sensitivity": 3,
    "artifact": 4,
    "registry": 5,
    "compile": 6, "runtime": 6,
    "build": 7, "packs": 7,
    "eval": 8, "server": 8,
    "cli": 9,
}
MAX_LINES = 450  # "~400 lines a module at most"
TORCH_FREE = ("skillforge.prompt", "skillforge.config", "skillforge.errors", "skillforge.refs")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str:
    """The module an imported dotted name lives in (a name imported from a module is not a module)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(path: Path) -> list[str]:
    """Every skillforge module and every top-level package the file imports, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for name in _imports(path):
            if name != "skillforge" and not name.startswith("skillforge."):
                continue
            target = _target(name)
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the packages on the way run their __init__ first
                step = ".".join(parts[:i])
                if step in MODULES and not f"{module}.".startswith(f"{step}."):
                    edges.add(step)
        edges.discard(module)
        graph[module] = edges
    return graph


GRAPH = _graph()


def _group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    # guards the reader itself: edges the code is known to have, including a function-level one
    assert "skillforge.prompt" in GRAPH["skillforge.compile"] and "skillforge.prompt" in GRAPH["skillforge.runtime.splice"]
    assert "skillforge.model.forward" in GRAPH["skillforge.compile"] and "skillforge.model" in GRAPH["skillforge.compile"]
    assert "skillforge.runtime" in GRAPH["skillforge.eval.arms"]  # via `from skillforge.runtime import ...`
    assert "skillforge.build" in GRAPH["skillforge.cli.eval_cmd"]  # imported inside the command function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_every_group_has_a_layer():
    assert {_group(m) for m in MODULES} - {""} <= set(RANKS), "add the new module or package to RANKS"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _group(m)))
def test_imports_point_down_the_layers(module: str):
    group = _group(module)
    upward = sorted(t for t in GRAPH[module]
                    if _group(t) and _group(t) != group and RANKS[_group(t)] >= RANKS[group])
    assert not upward, f"{module} (layer {RANKS[group]}) imports {upward}: a layer may only import lower ones"


def test_compile_and_runtime_share_only_the_prompt_contract():
    runtime = [m for m in MODULES if m == "skillforge.runtime" or m.startswith("skillforge.runtime.")]
    assert not [t for t in GRAPH["skillforge.compile"] if _group(t) == "runtime"]
    for m in runtime:
        assert not [t for t in GRAPH[m] if _group(t) in ("compile", "build", "eval", "cli", "server")], m


def test_the_eval_reference_does_not_use_the_contract_it_checks():
    assert "skillforge.prompt" not in GRAPH["skillforge.eval.arms"]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_import_neither_torch_nor_transformers(module: str):
    heavy = [n for n in _imports(MODULES[module]) if n.split(".")[0] in ("torch", "transformers", "safetensors")]
    assert not heavy, f"{module} must stay torch-free; it imports {heavy}"
    # nor through another skillforge module
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        for t in GRAPH[m] - seen:
            seen.add(t)
            todo.append(t)
    for m in seen:
        heavy = [n for n in _imports(MODULES[m]) if n.split(".")[0] in ("torch", "transformers")]
        assert not heavy, f"{module} reaches {m}, which imports {heavy}"


def test_transformers_is_driven_from_one_seam():
    """Only model/ (loading and the forward seam), rope.py (reads the model's rotary layout) and
    runtime/cache.py (the splice cache is a transformers Cache) import transformers."""
    allowed = {"skillforge.rope", "skillforge.runtime.cache"}
    users = {m for m, p in MODULES.items() if any(n.split(".")[0] == "transformers" for n in _imports(p))}
    assert {m for m in users if _group(m) != "model"} <= allowed


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small_and_say_what_they_own(module: str):
    source = MODULES[module].read_text(encoding="utf-8")
    lines = len(source.splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it (at most {MAX_LINES})"
    if source.strip():
        assert ast.get_docstring(ast.parse(source)), f"{module} opens without a docstring"
