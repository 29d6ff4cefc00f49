"""The code's shape, as tests: layering without import cycles, registries that name what is allowed."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "trainers")


def _modules() -> dict[str, Path]:
    mods = {"cli": ROOT / "cli.py"}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph(typing: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level or inside a function; under
    `if TYPE_CHECKING` too when `typing`)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not typing and _type_checking_only(node, parents):
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
    assert graph["trainers.runs.runner"], "the import graph is empty: the test reads nothing"
    assert cycles(graph) == []


def test_no_import_cycles_even_for_type_checking():
    """Annotation-only imports (`if TYPE_CHECKING:`) count too: no two modules lean on each other."""
    graph = import_graph(typing=True)
    assert "trainers.training.tasks" in graph["trainers.training.loop"]   # the loop's TYPE_CHECKING import is read
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
    for generic in ("trainers.runs.runner", "trainers.training.loop", "trainers.training.tasks", "trainers.inference.predictor"):
        assert not graph[generic] & {"trainers.training.head_task", "trainers.training.clip_task", "trainers.models.heads",
                                     "trainers.models.video_models"}, generic


def test_every_task_kind_is_found_through_the_registry():
    code = ("import sys; from trainers.runs import runner; from trainers.training import tasks; "
            "print([k.name for k in tasks.kinds()], 'trainers.training.head_task' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['head',", "'video-model',", "'joint-head',", "'joint-video-model']", "True"]


def test_the_layout_is_a_map():
    """Every package folder says what it holds and has at most 12 modules side by side; the wheel
    installs only cli, pipeline and trainers; docs/design.md's module table lists exactly the tree."""
    import re
    import tomllib

    folders = [d for pkg in PACKAGES for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
               if d.is_dir() and d.name != "__pycache__"]
    assert len(folders) >= 10
    for d in folders:
        assert len([p for p in d.glob("*.py") if p.name != "__init__.py"]) <= 12, d
        init = d / "__init__.py"
        assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"{d} does not say what it holds"
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["py-modules"] == ["cli"] and set(setup["packages"]["find"]["include"]) == {
        "pipeline", "pipeline.*", "trainers", "trainers.*"}
    design = (ROOT / "docs/design.md").read_text()
    table = design[design.index("| module | what it is |"):]
    table = table[:table.index("\n\n")]
    listed = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    tree = ["cli.py"] + sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
                               if p.suffix in (".py", ".html") and p.name != "__init__.py" and "__pycache__" not in p.parts)
    assert sorted(listed) == sorted(tree)


def test_cli_is_commands_only():
    """cli.py: parse -> config -> one library call -> print, in at most 450 non-blank lines; it defines
    only commands (and main), no helpers of its own: what they share is trainers/clikit.py and
    trainers/console.py, what they do is the library."""
    import ast

    text = (ROOT / "cli.py").read_text()
    assert sum(1 for line in text.splitlines() if line.strip()) <= 450
    funcs = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]
    helpers = [f.name for f in funcs if f.name != "main" and not any(
        isinstance(d, ast.Call) and getattr(d.func, "id", None) == "command" for d in f.decorator_list)]
    assert not helpers, helpers
