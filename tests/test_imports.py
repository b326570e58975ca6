"""The layering of ../shared/DESIGN.md holds: no module of src/stratalm is part of an import
circle, no level imports a higher one, and the command's help needs no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "stratalm"

# Top-level modules and packages of stratalm by level; a module may import its own level and below.
LEVELS = {
    0: ("errors", "version", "config_fields", "model_config", "lazy", "machine"),
    1: ("tokenize", "data", "layers", "precision"),
    2: ("models",),
    3: ("families", "objectives", "checkpoint"),
    4: ("loop", "tasks", "generate", "embed"),
    5: ("lens", "evaluate", "prompting", "serve", "info", "plot"),
    6: ("cli", "demo", "__main__"),
    7: ("__init__",),  # the package root is a facade for users: no module imports it
}
LEVEL_OF = {name: level for level, names in LEVELS.items() for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SOURCE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """stratalm modules `path` imports anywhere (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def level(name: str) -> int:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LEVEL_OF, f"{name} has no level in LEVELS; add it where it belongs"
    return LEVEL_OF[top]


def test_no_module_is_part_of_an_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_level_imports_a_higher_one():
    wrong = sorted(f"{a} (level {level(a)}) imports {b} (level {level(b)})"
                   for a, targets in graph().items() for b in targets if level(b) > level(a))
    assert not wrong, "\n".join(wrong)


def test_the_graph_sees_real_imports():
    """The checks above can fail: the graph finds imports that are there."""
    edges = graph()
    assert "stratalm.loop.trainer" in edges["stratalm.loop.pretraining"]
    assert "stratalm.checkpoint.native" in edges["stratalm.checkpoint.hf"]
    assert level("stratalm.cli") > level("stratalm.loop.trainer") > level("stratalm.models.stack")


def test_help_and_flag_errors_do_not_import_torch():
    script = ("import sys\nfrom stratalm.cli import main\n"
              "for argv in (['--help'], ['pretrain', '--help'], ['finetune', '--help'], ['pretrain', '--bogus']):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "torch not imported" in done.stderr, done.stderr[-2000:]
    assert "loop.lr" in done.stdout and "train.lr" in done.stdout  # each command lists every key


def test_every_task_takes_its_options_from_the_torch_free_table():
    from stratalm.embed import POOLINGS
    from stratalm.tasks import task_class, task_names
    from stratalm.tasks.options import POOLING_NAMES, TASK_OPTIONS

    assert set(TASK_OPTIONS) == set(task_names())
    assert all(task_class(name).OPTIONS is TASK_OPTIONS[name] for name in task_names())
    assert POOLING_NAMES == POOLINGS
