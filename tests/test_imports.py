"""The package's import graph: no cycles, training never imports the report, and no module draws
with pyplot or switches matplotlib's backend at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xray_loss"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """xray_loss modules imported when ``path`` is imported (not those inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = {t for t in top_level_imports(path) if t in modules and t != name}
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        # (a package's own modules import each other while it initialises: not an edge)
        parents = {".".join(t.split(".")[:i]) for t in targets for i in range(2, t.count(".") + 1)}
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges[name] = targets | {p for p in parents - own if p in modules and p != name}
    return edges


def test_the_package_has_no_import_cycles():
    edges, cycles = graph(), []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_importing_training_imports_no_report():
    # xray_loss.report only: with scipy installed a library imports scipy.optimize's own .report
    code = "import sys, xray_loss.train; print([m for m in sys.modules if 'xray_loss.report' in m])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_module_imports_matplotlib_at_import_or_switches_its_backend():
    """Figures are drawn with matplotlib's Figure API, imported where they are drawn (the
    report package, which draws nothing else, imports it at the top). torchmetrics itself
    imports pyplot when matplotlib is installed: outside this package."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "matplotlib.use(" not in text, path
        assert "matplotlib.pyplot" not in text, path
        if "report" not in path.parts:
            assert not any(t.startswith("matplotlib") for t in top_level_imports(path)), path
