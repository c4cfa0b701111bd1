"""The package's shape: its layers in order, every import pointing down them, and no import cycle
(counting the imports inside functions, which are cycles and dependencies all the same, only deferred)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distrain"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The distrain modules `path` imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from distrain.x import y`: y is a module of its own, or a name defined in distrain.x.
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_distrain_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "distrain.loop.trainer" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The package's layers, lowest first. A module may import from its own layer and the ones below; its
# layer is the longest prefix that names it. The config's sections (each component's options.py, torch-
# free) sit below the assembled Config, which sits below everything that reads it.
LAYERS = [
    ["distrain.version", "distrain.errors", "distrain.atomic", "distrain.seeding"],
    ["distrain.config.coerce", "distrain.config.registry"],
    [
        "distrain.launch.options",
        "distrain.strategies.options",
        "distrain.checkpoint.options",
        "distrain.reporting.options",
    ],
    ["distrain.config"],
    ["distrain.launch"],
    ["distrain.data"],
    ["distrain.models"],
    ["distrain.strategies"],
    ["distrain.checkpoint"],
    ["distrain.reporting"],
    ["distrain.loop", "distrain.callbacks"],
    [
        "distrain.api",
        "distrain.cli",
        "distrain.evaluate",
        "distrain.prediction",
        "distrain.examples",
        "distrain.starter",
        "distrain.__main__",
        "distrain",
    ],
]


def layer_of(module: str) -> int:
    found = [
        (len(p), i) for i, prefixes in enumerate(LAYERS) for p in prefixes if module == p or module.startswith(p + ".")
    ]
    assert found, f"{module} is in no layer of tests/test_layout.py's LAYERS: add it"
    return max(found)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_every_import_points_down_the_layers():
    ups = upward_imports(import_graph())
    assert ups == [], "imports that run up the package's layers: " + ", ".join(f"{a} -> {b}" for a, b in ups)


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"distrain.data.batches": {"distrain.loop.trainer", "distrain.errors"}}) == [
        ("distrain.data.batches", "distrain.loop.trainer")
    ]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_logging_needs_nothing_from_checkpointing():
    graph = import_graph()
    for module in ("distrain.reporting.history", "distrain.reporting.plots", "distrain.reporting.wandb_run"):
        assert graph[module] and not any(m.startswith("distrain.checkpoint") for m in graph[module]), module


def test_ruff_finds_nothing_to_lint_or_format():
    # The formatter and linter configured in pyproject.toml: `ruff format .` and `ruff check --fix .` fix it.
    root = PACKAGE.parent
    for args in (["check", "--quiet", "."], ["format", "--check", "--quiet", "."]):
        result = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout}{result.stderr}"


# ------------------------------------------------------------------------------ names the docstrings give

DOTTED = re.compile(r"(?<![\w.'\"])distrain(?:\.[A-Za-z_]\w*)+")  # distrain.loop.steps.evaluate
FILE = re.compile(r"(?<![\w./-])((?:[A-Za-z_][\w-]*/)*[A-Za-z_]\w*\.py)\b")  # loop/several.py, steps.py


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring (and string statement, as a field's docstring is) and comment."""
    found = [
        (node.lineno, node.value.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    ]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return found + [(t.start[0], t.string) for t in tokens if t.type == tokenize.COMMENT]


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def resolves(dotted: str) -> bool:
    """Whether `dotted` is a distrain module, or a module followed by attributes it has
    (distrain.loop.steps.evaluate, distrain.config.schema.Config.data: a dataclass's fields count)."""
    parts = dotted.split(".")
    module = next(i for i in range(len(parts), 0, -1) if i == 1 or is_module(".".join(parts[:i])))
    obj = importlib.import_module(".".join(parts[:module]))
    for name in parts[module:]:
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        if name in fields and not hasattr(obj, name):
            return True  # a field with a default factory: no class attribute to go on from
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def file_exists(name: str, where: Path) -> bool:
    """A path with a folder (loop/several.py, bench/sharding.py) is read from the module's folder, the package
    or the repository; a bare file name from the module's folder, and only in a package's __init__.py (the
    map of the package's files: elsewhere `train.py` is the user's script)."""
    if "/" not in name:
        return where.name != "__init__.py" or (where.parent / name).is_file()
    return any((root / name).is_file() for root in (where.parent, PACKAGE, PACKAGE.parent))


def stale_names(path: Path) -> list[str]:
    """`file:line: name` for each name in the file's docstrings and comments that is not there."""
    shown = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
    stale = []
    for line, text in prose(path.read_text()):
        where = f"{shown}:{line}"
        stale += [f"{where}: {name}" for name in DOTTED.findall(text) if not resolves(name)]
        stale += [f"{where}: {name}" for name in FILE.findall(text) if not file_exists(name, path)]
    return stale


def test_the_modules_and_files_the_docstrings_name_exist():
    # A docstring or comment naming distrain.x.y or loop/x.py sends the reader to what is there now.
    stale = [s for path in sorted(PACKAGE.rglob("*.py")) for s in stale_names(path)]
    assert not stale, "names of modules, attributes or files that do not exist:\n" + "\n".join(stale)


def test_a_stale_name_in_a_docstring_is_seen(tmp_path):
    # The check above can fail: a moved module, a missing attribute and a missing file are each seen.
    module = tmp_path / "m.py"
    module.write_text(
        '"""See distrain.loops and distrain.loop.steps.train_one_epoch, not distrain.loop.steps.evaluate."""\n'
        "x = 1  # written by loop/nowhere.py; read by loop/several.py and distrain.config.schema.Config.data\n"
    )
    assert [s.split(": ", 1)[1] for s in stale_names(module)] == [
        "distrain.loops",
        "distrain.loop.steps.train_one_epoch",
        "loop/nowhere.py",
    ]
    (tmp_path / "__init__.py").write_text('"""\n- m.py     the module\n- gone.py  no more\n"""\n')
    assert [s.split(": ", 1)[1] for s in stale_names(tmp_path / "__init__.py")] == ["gone.py"]
