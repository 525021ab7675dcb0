"""The package's shape, checked: imports point down the stage list and no two modules
import each other (directly or around a loop).

    types / config / registry / errors    (the root: imports nothing of sftlab's stages)
    data  ->  models  ->  infer  ->  train  ->  eval | synth  ->  quickstart | study  ->  cli

``report`` (tables, charts, HTML) needs only the root, so any stage may use it. The
package's ``__init__`` (the public API, ``api`` below) re-exports entry points from every
stage: only the CLI, a thin adapter over that API, sits above it.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sftlab"

# stage -> rank; a module may import modules of its own stage or of a lower rank
RANKS = {"root": 0, "report": 1, "data": 2, "models": 3, "infer": 4, "train": 5,
         "eval": 6, "synth": 6, "quickstart": 7, "study": 7, "api": 8, "cli": 9, "__main__": 10}
ROOT_MODULES = {"types", "config", "registry", "errors"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every sftlab module ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            # `from sftlab.data import chat` imports the module sftlab.data.chat; `from
            # sftlab.data.io import read` imports sftlab.data.io
            targets = [t for t in submodules if t in modules] or [base]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    return "root" if parts[1] in ROOT_MODULES else parts[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_stage_is_known():
    unknown = {_stage(m) for m in _modules()} - set(RANKS)
    assert not unknown, f"add these stages to RANKS (and to the docstring): {sorted(unknown)}"


def test_imports_point_down():
    upward = []
    for module, targets in _graph().items():
        stage = _stage(module)
        for target in targets:
            other = _stage(target)
            if other != stage and RANKS[other] >= RANKS[stage]:
                upward.append(f"{module} ({stage}) imports {target} ({other})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(start: str) -> None:  # Tarjan's strongly connected components, iteratively
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not cycles, "modules that import each other:\n" + "\n".join(map(str, cycles))


def test_data_knows_nothing_of_the_stages_above():
    above = {"models", "infer", "train", "eval", "synth", "quickstart", "study", "cli"}
    bad = sorted(f"{m} -> {t}" for m, targets in _graph().items() if _stage(m) == "data"
                 for t in targets if _stage(t) in above)
    assert not bad, "\n".join(bad)
