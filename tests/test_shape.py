"""The code's shape, as tests: layering without import cycles, registries that name what is allowed."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "trainers")


def _modules() -> dict[str, Path]:
    mods = {"cli": ROOT / "cli.py", "clikit": ROOT / "clikit.py"}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).glob("*.py")):
            mods[f"{pkg}.{p.stem}" if p.stem != "__init__" else pkg] = p
    return mods


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level or inside a function; not
    under `if TYPE_CHECKING`)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycles_anywhere():
    graph = import_graph()
    assert graph["trainers.runs"], "the import graph is empty: the test reads nothing"
    assert cycles(graph) == []


def test_a_cycle_would_be_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_layering_pipeline_never_imports_trainers_or_the_cli():
    graph = import_graph()
    for m, deps in graph.items():
        if m.startswith("pipeline"):
            assert not {d for d in deps if d.startswith("trainers") or d == "cli"}, m


def test_runs_and_the_loop_import_no_concrete_task():
    graph = import_graph()
    for generic in ("trainers.runs", "trainers.loop", "trainers.tasks", "trainers.predictor"):
        assert not graph[generic] & {"trainers.head_task", "trainers.clip_task", "trainers.heads",
                                     "trainers.models3d"}, generic


def test_every_task_kind_is_found_through_the_registry():
    code = ("import sys; from trainers import runs, tasks; "
            "print([k.name for k in tasks.kinds()], 'trainers.head_task' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['head',", "'video-model',", "'joint-head',", "'joint-video-model']", "True"]
