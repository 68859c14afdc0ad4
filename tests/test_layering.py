"""The package's import graph is layered one way and has no cycles.

Layers, lowest first (a module may import its own layer and the layers below):

0. foundation: small helpers every layer may use (device, atomic files, thread and
   memory policy, seeds, paths, progress bars);
1. kernels (``nbcnn.kernels``: CPU Numba and CUDA kernels, shared geometry);
2. ops (``nbcnn.ops``: checks, dispatch to a kernel backend);
3. model API: everything else in ``nbcnn`` (layers, models, training, serialization,
   data, zoo, and the ``nbcnn`` package itself, whose lazy names point here);
4. tools (``nbcnn.bench``);
5. the command line (``nbcnn.cli``, the ``cli/`` folder).

Every import counts, function-level ones too: a lazy import still makes a cycle.
``python tests/test_layering.py`` prints the graph and any cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ((ROOT / "nbcnn", "nbcnn"), (ROOT / "cli", "nbcnn.cli"))  # cli/ installs as nbcnn.cli

FOUNDATION = {"nbcnn._atomic", "nbcnn._memory", "nbcnn._threads", "nbcnn._datapaths", "nbcnn.device",
              "nbcnn.random", "nbcnn.progress"}
LAYER_NAMES = ("foundation", "kernels", "ops", "model API", "tools", "cli")

# Cycles that exist and are being removed; nothing may be added here.
KNOWN_CYCLES: set[frozenset] = set()


def modules(sources=SOURCES) -> dict[str, Path]:
    out = {}
    for base, pkg in sources:
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


def import_graph(sources=SOURCES) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its source, at any depth)."""
    mods = modules(sources)

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module
                subs = [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in mods]
                deps.update(subs)
                if len(subs) < len(node.names):  # a name from the module itself, not a submodule
                    deps.update(filter(None, [known(src)]))
        deps.discard(mod)
        graph[mod] = deps
    return graph


def layer(mod: str) -> int:
    if mod in FOUNDATION:
        return 0
    if mod == "nbcnn.kernels" or mod.startswith("nbcnn.kernels."):
        return 1
    if mod == "nbcnn.ops" or mod.startswith("nbcnn.ops."):
        return 2
    if mod == "nbcnn.bench" or mod.startswith("nbcnn.bench."):
        return 4
    if mod == "nbcnn.cli" or mod.startswith("nbcnn.cli."):
        return 5
    return 3


def cycles(graph: dict[str, set[str]]) -> list[frozenset]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("import p.c\nfrom .. import VERSION\n")
    (pkg / "c.py").write_text("from p.sub.b import g\n")
    g = import_graph(((pkg, "p"),))
    assert g == {"p": {"p.a"}, "p.a": {"p.sub.b"}, "p.sub": set(), "p.sub.b": {"p.c", "p"}, "p.c": {"p.sub.b"}}
    assert cycles(g) == [frozenset({"p", "p.a", "p.sub.b", "p.c"})]   # b takes VERSION from p, which imports a
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    real = import_graph()
    assert "nbcnn.cli.common" in real["nbcnn.cli.train"]             # cli/ is nbcnn.cli
    assert "nbcnn.zoo" in real["nbcnn.cli.loading"]                  # imported inside a function


def test_imports_only_go_down_the_layers():
    g = import_graph()
    upward = sorted(f"{m} ({LAYER_NAMES[layer(m)]}) imports {d} ({LAYER_NAMES[layer(d)]})"
                    for m, deps in g.items() for d in deps if layer(d) > layer(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    found = set(cycles(import_graph()))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"


if __name__ == "__main__":
    g = import_graph()
    for m in sorted(g):
        print(f"{LAYER_NAMES[layer(m)]:>10}  {m} -> {', '.join(sorted(g[m])) or '-'}")
    print("cycles:", [sorted(c) for c in cycles(g)] or "none")
