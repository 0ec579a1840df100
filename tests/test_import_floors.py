"""The floors of DESIGN.md, kept: a module may import from its own floor and the floors below, never from a
higher one. Floor 1 is the ground (data, augmentation, networks, losses, metrics, config, infrastructure),
2 the SSL methods, segmentation and weights, 3 the training and inference entry points, 4 the study, 5 the
command line. The walk reads the source with `ast`, so imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sslseg"

# the floor of each top-level module or sub-package of sslseg ("" is the package's own __init__)
FLOORS: dict[str, int] = {
    "": 1,
    "errors": 1,
    "atomic": 1,
    "fence": 1,
    "config": 1,
    "console": 1,
    "distributed": 1,
    "device": 1,
    "rundir": 1,
    "slurm": 1,
    "trainer": 1,
    "oom": 1,
    "optim": 1,
    "data": 1,
    "augment": 1,
    "nn": 1,
    "losses": 1,
    "metrics": 1,
    "objects": 1,
    "methods": 2,
    "segmentation": 2,
    "weights": 2,
    "pretrain": 3,
    "finetune": 3,
    "evaluate": 3,
    "predict": 3,
    "export": 3,
    "select": 3,
    "selection": 3,
    "study": 4,
    "cli": 5,
    "demo": 5,
    "__main__": 5,
}

# (importing module, imported module) pairs that climb a floor and are not fixed yet, each with the reason.
# This list may only shrink: the test fails when an entry no longer occurs, so remove it with the fix.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """The sslseg modules one import statement loads (`from sslseg import x` loads sslseg.x when x is a
    module, else sslseg itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "sslseg"]
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    if base.split(".")[0] != "sslseg":
        return []
    return [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]


def _floor(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in FLOORS:
        raise KeyError(f"{module}: no floor for sslseg.{top}; add it to FLOORS in {Path(__file__).name}")
    return FLOORS[top]


def import_edges() -> list[tuple[str, str, str]]:
    """(importing module, imported module, file:line) for every sslseg import in the package."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, importer, path.name == "__init__.py"):
                    edges.append((importer, target, f"{path.relative_to(SRC.parent)}:{node.lineno}"))
    return edges


def test_every_module_has_a_floor():
    missing = []
    for path in PACKAGE.rglob("*.py"):
        try:
            _floor(_module_name(path))
        except KeyError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_the_walk_sees_imports_of_every_kind():
    # guards the walker itself: a top-level import, an import inside a function and `from sslseg import x`
    edges = {(a, b) for a, b, _ in import_edges()}
    assert ("sslseg.cli", "sslseg.errors") in edges
    assert ("sslseg.study.runner", "sslseg.console") in edges  # imported inside _worker_entry
    assert ("sslseg.finetune", "sslseg") in edges  # `import sslseg` for its version
    assert len(edges) > 100


def test_no_import_climbs_a_floor():
    climbing = {}
    for importer, target, where in import_edges():
        if _floor(target) > _floor(importer):
            climbing.setdefault((importer, target), where)
    new = {
        k: f"{where}: {k[0]} (floor {_floor(k[0])}) imports {k[1]} (floor {_floor(k[1])})"
        for k, where in climbing.items()
        if k not in KNOWN_EXCEPTIONS
    }
    assert not new, "imports that climb a floor (move the shared code down instead):\n" + "\n".join(
        new.values()
    )
    gone = set(KNOWN_EXCEPTIONS) - set(climbing)
    assert not gone, f"fixed, so remove from KNOWN_EXCEPTIONS: {sorted(gone)}"


@pytest.mark.parametrize(
    ("importer", "target", "climbs"),
    [
        ("sslseg.data.datasets", "sslseg.segmentation.inference", True),
        ("sslseg.study.runner", "sslseg.cli", True),
        ("sslseg.segmentation.module", "sslseg.data.datasets", False),
        ("sslseg.methods.masked", "sslseg.weights", False),  # the same floor
    ],
)
def test_floor_of_examples(importer, target, climbs):
    assert (_floor(target) > _floor(importer)) is climbs


def test_no_two_modules_import_each_other_through_a_circle():
    # a circle makes two rooms one: neither can be read, tested or moved without the other. The package's
    # own __init__ (which re-exports the API) and an import of a package by its own modules are left out.
    graph: dict[str, set[str]] = {}
    for importer, target, _ in import_edges():
        if target != "sslseg" and not importer.startswith(target + ".") and importer != target:
            graph.setdefault(importer, set()).add(target)
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" → ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "closed"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)
