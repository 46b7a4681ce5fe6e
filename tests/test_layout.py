"""The house's import rules, read from the source: no import cycles; transforms never imports
Prefect (nor flows), and only the Spark engine imports pyspark; every module imports on its own."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "transforms", "crawlers", "quality", "flows")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, at the top or inside a function, with the packages above each
    (importing a.b.c runs a/__init__ and a/b/__init__ first), but not `name`'s own packages."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES)
    closed = set()
    for target in targets:
        parts = target.split(".")
        closed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    # A module's own packages are imported before it runs: importing them is no edge.
    parts = name.split(".")
    closed -= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return closed


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node] & MODULES.keys()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(MODULES)))
    for node in sorted(MODULES):
        if node not in index:
            visit(node)
    return found


def _importing(prefix: str, banned: str) -> list[str]:
    return sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name == prefix or name.startswith(prefix + ".")
        for target in targets
        if target == banned or target.startswith(banned + ".")
    )


def test_there_is_no_import_cycle():
    assert _cycles() == []


def test_the_walk_finds_a_cycle(tmp_path, monkeypatch):
    # The check itself: two modules importing each other are reported.
    monkeypatch.setitem(GRAPH, "transforms.clean.steps", GRAPH["transforms.clean.steps"] | {"transforms.clean.stage"})
    assert any({"transforms.clean.stage", "transforms.clean.steps"} <= set(c) for c in _cycles())


def test_transforms_never_import_prefect_flows_or_the_other_rooms():
    assert _importing("transforms", "prefect") == []
    assert _importing("transforms", "flows") == []
    assert _importing("transforms", "crawlers") == []
    assert _importing("transforms", "quality") == []
    assert _importing("schemas", "transforms") == []
    assert [line for p in ("transforms", "crawlers", "quality", "schemas") for line in _importing(p, "flows")] == []


def test_only_the_spark_engine_imports_pyspark():
    outside = [line for line in _importing("transforms", "pyspark") if not line.startswith("transforms.engines.spark")]
    assert outside == []
    # Nothing in transforms outside the engines package reaches for the Spark engine either:
    # a stage asks the engine it is given.
    reaching = [line for line in _importing("transforms", "transforms.engines.spark") if not line.startswith("transforms.engines.spark")]
    assert reaching == []


def test_stages_never_ask_which_engine_they_have():
    asking = []
    for name, path in MODULES.items():
        if name.startswith("transforms.") and not name.startswith("transforms.engines"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(node.value, ast.Name) and node.value.id == "engine":
                    asking.append(f"{name}:{node.lineno}")
    assert asking == []


IMPORT_EACH = """
import importlib, sys, traceback
ours = {packages!r}
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ours]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
print("\\n".join(failed))
"""


def test_every_module_imports_on_its_own():
    """Each module imported with none of ours loaded before it (third-party libraries stay loaded,
    to keep this to seconds); `__main__` modules run a command line and are left out."""
    names = [name for name in MODULES if not name.endswith("__main__")]
    code = IMPORT_EACH.format(packages=PACKAGES)
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
