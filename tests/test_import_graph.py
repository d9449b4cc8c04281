"""mlic's modules import each other without a circle, counting the imports inside functions too: a function-level
import that exists only to dodge a circle is the circle still. Read from the source (ast), not by importing."""

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "mlic"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(tree: ast.AST, known: dict[str, Path], here: str) -> set[str]:
    """The mlic modules `tree` imports anywhere in it (`from mlic.x import y` counts mlic.x.y when that is a
    module, else mlic.x)."""
    package = here if known[here].name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(ast.parse(path.read_text()), known, name) for name, path in known.items()}


def test_no_module_of_mlic_imports_itself_back_through_others():
    found = circles(graph())
    assert not found, "import circles (function-level imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_finds_a_planted_circle():
    edges = graph()
    edges["mlic.errors"] = edges["mlic.errors"] | {"mlic.training.engine"}  # errors is imported by nearly everything
    assert any("mlic.errors" in c and "mlic.training.engine" in c for c in circles(edges))


# The layers, lowest first: a module imports only from its own layer and the ones below. The core is every
# top-level module not named here; `mlic` itself (load_model, imported on first use) and the CLI sit on top.
LAYERS = ("core", "mlic.data", "mlic.config", "mlic.models", "mlic.training", "mlic.serving", "mlic.reporting",
          "mlic.cli")


def layer(module: str) -> int:
    if module == "mlic":
        return len(LAYERS)
    found = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return found[0] if found else 0


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer(b) > layer(a))


def test_every_import_goes_down_the_layers():
    found = upward(graph())
    assert not found, f"imports up the layers {LAYERS}: " + "; ".join(found)


def test_the_layer_check_finds_a_planted_upward_import():
    edges = graph()
    edges["mlic.data.pipeline"] = edges["mlic.data.pipeline"] | {"mlic.training.build"}
    assert upward(edges) == ["mlic.data.pipeline -> mlic.training.build"]
