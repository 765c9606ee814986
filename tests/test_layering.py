"""The layering docs/architecture.md draws, checked on the source (ast only: nothing is imported).

- `quantization/arithmetic/` is the bottom of quantization: plain numerics on arrays and plans. It
  imports nothing from placement, the emitters or the stage modules above them.
- `quantization/plan.py`, the plan every stage reads, imports only the arithmetic at run time.
- No import cycle between ptq_cli's modules, counting imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "ptq_cli"
ABOVE_ARITHMETIC = ("ptq_cli.quantization.placement", "ptq_cli.quantization.emitters", "ptq_cli.quantization.api",
                    "ptq_cli.quantization.modes", "ptq_cli.quantization.static", "ptq_cli.quantization.output",
                    "ptq_cli.quantization.timings", "ptq_cli.quantization.datafree",
                    "ptq_cli.quantization.source")


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the module, inside functions too; with
    runtime_only, those under `if TYPE_CHECKING:` are left out."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_arithmetic_imports_nothing_above_it():
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in sorted((PACKAGE / "quantization" / "arithmetic").rglob("*.py"))
             for line, name in _imports(path) if _under(name, ABOVE_ARITHMETIC)]
    assert not wrong, "quantization/arithmetic/ imports from the layers above it:\n" + "\n".join(wrong)


def test_the_plan_imports_only_the_arithmetic_at_run_time():
    path = PACKAGE / "quantization" / "plan.py"
    wrong = [f"line {line}: {name}" for line, name in _imports(path, runtime_only=True)
             if name.startswith("ptq_cli.quantization.") and not _under(name, ("ptq_cli.quantization.arithmetic",))]
    assert not wrong, f"quantization/plan.py imports from above the arithmetic: {wrong}"


def test_the_check_can_fail():
    assert _under("ptq_cli.quantization.placement.place.make_plan", ABOVE_ARITHMETIC)
    assert not _under("ptq_cli.quantization.placements", ABOVE_ARITHMETIC)
    assert any(_under(name, ABOVE_ARITHMETIC) for _, name in _imports(PACKAGE / "quantization" / "static.py"))


def _import_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for _, name in _imports(path, runtime_only=True):
            while name and name not in modules:  # `from pkg.mod import function` -> pkg.mod
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles (imports inside functions count too):\n" + "\n".join(map(", ".join, cycles))


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_subpackage_shadows_a_public_name():
    """`ptq_cli.quantize` is the function even after `import ptq_cli.quantization.api`: the import
    system binds each submodule to the package's attribute of its own name, so no module may be
    named like the API."""
    import ptq_cli

    modules = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert not modules & set(ptq_cli.__all__), modules & set(ptq_cli.__all__)
    import ptq_cli.calibration.api  # noqa: F401
    import ptq_cli.comparison.api  # noqa: F401
    import ptq_cli.quantization.api  # noqa: F401

    assert all(callable(getattr(ptq_cli, name)) for name in ("quantize", "calibrate", "compare"))
    assert type(ptq_cli).__name__ == "module"  # a plain module: no class swap
