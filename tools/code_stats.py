"""Structure figures of kpipe: function lengths, module sizes, import cycles, arrows back to the facade.

Usage: ``python tools/code_stats.py [--package kpipe]``. Prints the longest functions of
``kpipe/training``, the length of ``train()``, the size of ``training/run.py``, and any cycle in the graph of
module-level imports between kpipe modules. ``tests/test_layout.py`` asserts the limits.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def function_lengths(folder: Path) -> list[tuple[int, str]]:
    """``(lines, "file:function")`` of every function and method under ``folder``, longest first."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}"))
    return sorted(found, reverse=True)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> kpipe modules it imports at module level (``if TYPE_CHECKING:`` blocks excluded)."""
    modules = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def facade_importers(package: Path) -> list[str]:
    """kpipe modules that import the package facade ``kpipe`` itself, at any level (an arrow back up)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if name != "kpipe" and ((isinstance(node, ast.ImportFrom) and node.module == "kpipe" and node.level == 0)
                                    or (isinstance(node, ast.Import) and any(a.name == "kpipe" for a in node.names))):
                found.append(name)
    return sorted(set(found))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (each as a list of modules), found by depth-first search."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5, help="Longest functions to list.")
    args = parser.parse_args()
    lengths = function_lengths(ROOT / "kpipe" / "training")
    train_len = next(n for n, name in lengths if name.endswith("run.py:train"))
    run_py = len((ROOT / "kpipe" / "training" / "run.py").read_text().splitlines())
    print(f"train(): {train_len} lines; kpipe/training/run.py: {run_py} lines")
    print("longest functions in kpipe/training:")
    for n, name in lengths[: args.top]:
        print(f"  {n:4d}  {name}")
    graph = import_graph(ROOT / "kpipe")
    found = cycles(graph)
    print(f"import cycles between kpipe modules: {found or 'none'}")
    back = facade_importers(ROOT / "kpipe")
    print(f"modules importing the kpipe facade: {back or 'none'}")


if __name__ == "__main__":
    main()
