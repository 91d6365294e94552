"""No import loops between the package's modules or subpackages (lazy imports included): the graph
is read from the source with ``ast``, every ``import`` statement anywhere in a module counts."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "captum_ext"


def _modules():
    """Every module, except ``python -m`` entry points (``__main__.py``): they are run, never imported,
    so their imports cannot close a loop."""
    mods = {}
    for p in ROOT.rglob("*.py"):
        if p.name == "__main__.py":
            continue
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _edges(mods):
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[m].update(n for n in names if n in mods and n != m and not m.startswith(n + "."))
    return edges


def _cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _unit(module):
    """A subpackage (``captum_ext.metrics``) or a top-level module (``captum_ext.cli``)."""
    return ".".join(module.split(".")[:2])


def _package_graph():
    graph = {}
    for m, targets in _edges(_modules()).items():
        for t in targets:
            a, b = _unit(m), _unit(t)
            if a != b and "captum_ext" not in (a, b):
                graph.setdefault(a, set()).add(b)
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    assert _cycles(_edges(_modules())) == []


def test_no_subpackage_imports_one_that_imports_it_back():
    assert _cycles(_package_graph()) == []
