"""The import floors of fastft, checked on the source (``ast``) and by importing.

Layers: core <- data, models, ops <- swap <- train, export, runtime <- compress, serve, bench <- cli
(export reads model directories through models/ and data/, never through train/).
Every ``import`` / ``from ... import`` of a fastft module counts, at module level or inside a
function (an import inside a function is still an edge: it only hides a circle).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import fastft

PACKAGE_DIR = Path(fastft.__file__).resolve().parent
# the Triton kernels live in the top-level kernels/ folder and install as fastft.kernels
KERNELS_DIR = PACKAGE_DIR.parent / "kernels"

# Edges tolerated for a while (importer, imported), each with the reason; the test fails once an
# entry is no longer in the code, so the list never goes stale. Empty: no exceptions today.
KNOWN_VIOLATIONS: list[tuple[str, str]] = []

PIPELINE = ("swap", "train", "export", "runtime", "compress", "serve", "bench", "cli", "data", "models")
# (importer layer, imported layers): an edge from a module of the first to one of the second is forbidden
FORBIDDEN = [
    ("runtime", ("train", "compress", "export", "bench")),
    ("serve", ("train", "compress", "export", "bench")),
    ("export", ("train", "compress", "serve", "bench")),  # export reads model dirs via models/ and data/
    ("ops", PIPELINE),
    ("kernels", PIPELINE),
    ("core", PIPELINE + ("ops", "kernels", "env", "_native")),
    ("data", ("swap", "train", "export", "runtime", "compress", "serve", "bench")),
    ("models", ("swap", "train", "export", "runtime", "compress", "serve", "bench")),
]


def _module_name(path: Path) -> str:
    if path.is_relative_to(KERNELS_DIR):
        parts = ["fastft", "kernels", *path.relative_to(KERNELS_DIR).with_suffix("").parts]
    else:
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = sorted(PACKAGE_DIR.rglob("*.py")) + sorted(KERNELS_DIR.rglob("*.py"))
    return {_module_name(p): p for p in files}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The fastft module ``name`` names (itself, or the package holding an imported attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """{module: {fastft modules it imports}} over every fastft/**/*.py, imports in functions included."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from fastft.x import y`: y may be a submodule (edge to it) or an attribute (edge to x)
                targets = [f"{prefix}.{a.name}" for a in node.names] or [prefix]
            for t in targets:
                if not t.startswith("fastft"):
                    continue
                dep = _resolve(t, modules)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def forbidden_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            src, dst = _layer(mod), _layer(dep)
            if dst == "cli" and src != "cli" and mod != "fastft.__main__":  # python -m fastft runs the CLI
                bad.append((mod, dep))
                continue
            for layer, banned in FORBIDDEN:
                if src == layer and dst in banned and dst != src:
                    bad.append((mod, dep))
            if src in ("ops", "kernels", "core") and dep == "fastft":
                bad.append((mod, dep))  # the lazy top-level package reaches every layer
    return bad


def test_import_graph_has_no_circles_and_no_forbidden_edges():
    graph = import_graph()
    assert sum(len(d) for d in graph.values()) > 50, "the import graph is implausibly small: the parser is broken"
    stale = [(a, b) for a, b in KNOWN_VIOLATIONS if b not in graph.get(a, ())]
    for a, b in KNOWN_VIOLATIONS:
        graph.get(a, set()).discard(b)
    cycles = find_cycles(graph)
    bad = forbidden_edges(graph)
    lines = [f"KNOWN_VIOLATIONS entry {a} -> {b} is gone: remove it from the list" for a, b in stale]
    lines += [f"import circle: {' <-> '.join(c)}" for c in cycles]
    for c in cycles:
        lines += [f"    {a} -> {b}" for a in c for b in sorted(graph[a]) if b in c]
    lines += [f"forbidden edge: {a} -> {b}" for a, b in bad]
    assert not lines, "\n".join(lines)


def test_checker_sees_circles_and_forbidden_edges():
    """The checker itself: a planted circle and planted forbidden edges are reported."""
    graph = {
        "fastft.swap": {"fastft.export.attention"},
        "fastft.export.attention": {"fastft.swap"},
        "fastft.runtime.load": {"fastft.train.metrics", "fastft.core.numerics"},
        "fastft.ops.attention": {"fastft.core.errors", "fastft.models"},
        "fastft.core.io": {"fastft.data"},
        "fastft.env": {"fastft.cli"},
        "fastft.cli.env": {"fastft.env"},
        "fastft.export.checks": {"fastft.train.evaluate"},
    }
    assert find_cycles(graph) == [["fastft.export.attention", "fastft.swap"]]
    assert set(forbidden_edges(graph)) == {
        ("fastft.runtime.load", "fastft.train.metrics"),
        ("fastft.ops.attention", "fastft.models"),
        ("fastft.core.io", "fastft.data"),
        ("fastft.env", "fastft.cli"),
        ("fastft.export.checks", "fastft.train.evaluate"),
    }


def test_serving_imports_no_training_export_or_bench_module():
    code = (
        "import json, sys\n"
        "import fastft.runtime\n"
        "from fastft import load\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['fastft','train'],['fastft','compress'],['fastft','export'],['fastft','bench'],['fastft','cli']))\n"
        "print(json.dumps({'bad': bad, 'runtime': 'fastft.runtime' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["runtime"]
    assert result["bad"] == [], f"import fastft.runtime / fastft.load loaded {result['bad']}"


def test_export_imports_no_training_module():
    code = (
        "import json, sys\n"
        "import fastft.export, fastft.export.peer\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['fastft','train'],['fastft','compress'],['fastft','serve'],['fastft','bench']))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], "import fastft.export loaded training modules"
