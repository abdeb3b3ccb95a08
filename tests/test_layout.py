"""The package's layering, read from its own imports: no import circle, no library
module imports the command-line layer, methods do not import evaluation."""
import ast
from pathlib import Path

from .conftest import REPO

PKG = REPO / "sslcifar"
COMMAND_LINE = {"sslcifar.cli"}
EVALUATION = {"sslcifar.knn", "sslcifar.linear_eval", "sslcifar.figures", "sslcifar.pretrained"}


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """{module: set of sslcifar modules it imports}, relative imports resolved."""
    graph = {}
    for path in PKG.rglob("*.py"):
        mod = _name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("sslcifar")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("sslcifar"):
                    for a in node.names:       # `from . import knn` names a module
                        sub = f"{base}.{a.name}"
                        deps.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                                 or (PKG.parent / sub.replace(".", "/")).is_dir() else base)
        graph[mod] = {d for d in deps if d != mod}
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "sslcifar.methods.simclr" in graph and "sslcifar.train" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_only_command_modules_import_the_command_line_layer():
    for mod, deps in import_graph().items():
        if mod in COMMAND_LINE or mod.endswith("__main__"):
            continue
        assert not deps & COMMAND_LINE, f"{mod} imports {deps & COMMAND_LINE}"


def test_methods_do_not_import_evaluation_or_the_loop():
    for mod, deps in import_graph().items():
        if mod.startswith("sslcifar.methods"):
            bad = {d for d in deps if d in EVALUATION or d == "sslcifar.train"
                   or d.startswith(("sslcifar.knn", "sslcifar.figures"))}
            assert not bad, f"{mod} imports {bad}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
