"""The shape of the code: no import cycles, imports pointing down the data flow, small modules,
and no user-interface library under the method or the headless command."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The packages of engine/, in the order of the data flow: a package may import only from packages
# listed before it (and from itself).
LAYERS = ["core", "runtime", "model", "database", "timing", "search", "backends", "executors", "export", "run", "deploy", "recovery"]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def engine_modules() -> dict[str, Path]:
    return {module_name(path): path for path in (ROOT / "engine").rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every engine module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "engine":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = engine_modules()
    graph = {}
    for name, path in modules.items():
        parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
        graph[name] = imports_of(path, modules) - parents - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_engine_counting_function_level_imports():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_data_flow():
    packages = {path.name for path in (ROOT / "engine").iterdir() if (path / "__init__.py").exists()}
    assert packages == set(LAYERS), "a new package must take its place in LAYERS"
    wrong = []
    for module, imported in import_graph().items():
        here = module.split(".")[1] if module.count(".") else None
        for target in imported:
            there = target.split(".")[1]
            if here and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_module_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("spdy_tui/**/*.py")]
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_the_headless_command_never_imports_textual():
    code = (
        "import sys, spdy_tui.cli\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'textual')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
