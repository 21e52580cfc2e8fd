"""Imports point one way: base <- models, data, evaluation <- engine, inference, web <- export <- search.

Every ``import`` in every module of ``segkit/`` is read (those inside functions too: an import moved into
a function to dodge a cycle is still a dependency) and checked against the layer table below. A module may
import its own package and any lower layer; packages of one layer never import each other (engine and
inference in particular; the base's few modules may use each other); and no two modules import each
other, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import segkit

#: layer of each top-level part of the package (a lower number is lower: it may be imported by higher ones)
LAYERS = {
    "segkit.labels": 0,
    "segkit.config": 0,
    "segkit.cli": 0,
    "segkit._compat": 0,
    "segkit.formats": 0,
    "segkit.models": 1,
    "segkit.data": 1,
    "segkit.evaluation": 1,
    "segkit.engine": 2,
    "segkit.inference": 2,
    "segkit.web": 2,
    "segkit.export": 3,
    "segkit.search": 4,
}
#: the package's own ``__init__``: a facade that may load anything on first use (``segkit.create_model``)
FACADE = "segkit"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> Iterator[tuple[str, int]]:
    """``(imported segkit module, line)`` for every import in the file, function-level ones included.

    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "segkit":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "segkit":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else base), node.lineno


def layer_of(module: str) -> tuple[str, int] | None:
    """The layer-table entry a module belongs to (the longest matching prefix)."""
    best = None
    for part, level in LAYERS.items():
        if (module == part or module.startswith(part + ".")) and (best is None or len(part) > len(best[0])):
            best = (part, level)
    return best


def check_layers(root: Path) -> list[str]:
    """Every violation in the package at ``root``, each naming both files (empty: all imports point down)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        for target, line in imports_of(path, name, modules):
            if name == FACADE or target == FACADE or target == name:
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            src, dst = layer_of(name), layer_of(target)
            if src is None:
                problems.append(f"{path.relative_to(root.parent)}: not in the layer table")
                continue
            if dst is None:
                if target not in modules:
                    problems.append(f"{where}, which does not exist")
                continue
            if target in modules:
                graph[name].add(target)
            if src[0] == dst[0]:
                continue
            target_file = files.get(target) or files.get(target.rpartition(".")[0])
            other = target_file.relative_to(root.parent) if target_file else target
            if dst[1] > src[1]:
                problems.append(
                    f"{where} ({other}): upward, layer {src[1]} ({src[0]}) -> {dst[1]} ({dst[0]})"
                )
            elif dst[1] == src[1] and src[1] > 0:  # the base's few modules may use each other (no cycles)
                problems.append(f"{where} ({other}): sideways, {src[0]} and {dst[0]} share layer {src[1]}")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph, files, root)]
    return problems


def cycles(graph: dict[str, set[str]], files: dict[str, Path], root: Path) -> list[list[str]]:
    """One representative cycle (as file paths) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [[str(files[m].relative_to(root.parent)) for m in g] for g in groups]


PACKAGE = Path(segkit.__file__).parent


def test_every_import_points_down_and_no_module_imports_another_in_a_circle() -> None:
    problems = check_layers(PACKAGE)
    assert problems == [], "\n".join(problems)


def test_every_module_is_in_the_layer_table() -> None:
    names = {module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")} - {FACADE}
    assert all(layer_of(n) is not None for n in names), sorted(n for n in names if layer_of(n) is None)


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "segkit"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


BASE_FILES = {
    "__init__.py": "",
    "labels.py": "",
    "models/__init__.py": "",
    "models/factory.py": "from segkit import labels\n",
    "engine/__init__.py": "",
    "engine/trainer.py": "from segkit.models.factory import x\n",
    "inference/__init__.py": "",
    "inference/predictor.py": "from segkit.models import factory\n",
    "search/__init__.py": "",
    "search/netadapt.py": "from segkit.engine.trainer import TrainStep\n",
}


def test_the_checker_accepts_a_clean_tree(tmp_path: Path) -> None:
    assert check_layers(_fake_package(tmp_path, BASE_FILES)) == []


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        # an upward import hidden inside a function, naming both files
        (
            "models/factory.py",
            "def f():\n    from segkit.search.netadapt import run\n",
            "segkit/models/factory.py:2 imports segkit.search.netadapt (segkit/search/netadapt.py): upward",
        ),
        # deployment reaching into the trainer
        (
            "inference/predictor.py",
            "import segkit.engine.trainer\n",
            "segkit/inference/predictor.py:1 imports segkit.engine.trainer (segkit/engine/trainer.py): "
            "sideways",
        ),
        # the base importing a layer above it, by a relative import
        ("labels.py", "from .models import factory\n", "segkit/labels.py:1 imports segkit.models.factory"),
    ],
)
def test_the_checker_names_both_files_of_a_wrong_import(
    tmp_path: Path, file: str, text: str, expected: str
) -> None:
    problems = check_layers(_fake_package(tmp_path, {**BASE_FILES, file: text}))
    assert any(p.startswith(expected) for p in problems), problems


def test_the_checker_finds_a_cycle_inside_one_package(tmp_path: Path) -> None:
    files = {
        **BASE_FILES,
        "search/run.py": "from segkit.search import netadapt\n",
        "search/netadapt.py": "def main():\n    from segkit.search.run import go\n",
    }
    problems = check_layers(_fake_package(tmp_path, files))
    assert problems == ["import cycle: segkit/search/netadapt.py -> segkit/search/run.py"]
