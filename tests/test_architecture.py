"""The layers of the package, declared once per subpackage, and the test that holds every
import to them.

Each subpackage (and each top-level module) sits in one layer; every module of a package
is in its package's layer, so a new module needs no edit here. A module may import from
its own layer or a lower one, never from a higher one, and the imports between modules
form no cycle. Imports under ``if TYPE_CHECKING:`` are annotations only and are not
counted. ARCHITECTURE.md describes each layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mxnorm_spark"

# Lowest first: subpackages, and the few top-level modules, each in exactly one layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("_version", "spark_extra")),
    ("math", ("core",)),
    ("io", ("store",)),
    ("serving", ("serving",)),
    ("report", ("report",)),
    # Apache Beam over the numpy core and serving: no Spark package below it, none imported.
    ("beam", ("beam",)),
    ("engines", ("engines",)),
    ("batch", ("batch",)),
    ("keyed", ("keyed",)),
    ("streaming", ("streaming",)),
    ("ml", ("ml",)),
    ("feast", ("feast",)),
    ("entry", ("cli",)),
    # The package root re-exports, and the former flat module paths re-export what moved.
    (
        "public",
        (
            "__init__",
            "__main__",
            "errors",
            "moments",
            "state",
            "aggregate",
            "apply",
            "sources",
            "progress",
            "session",
            "config",
            "demo",
            "keyed_stream",
            "ml_keyed",
        ),
    ),
]


def _unit(module: str) -> str:
    """The unit a module's layer is declared for: its top-level package, or itself."""
    return module.split(".", maxsplit=1)[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> set[str]:
    """Modules of the package imported anywhere in ``tree`` (lazy imports too)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            names = []
        for name in names:
            if name.startswith("mxnorm_spark."):
                found.add(name.removeprefix("mxnorm_spark."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = {d for d in _imports(ast.parse(path.read_text())) if d in modules}
        graph[name] = deps - {name}
    return graph


def _layer_of() -> dict[str, int]:
    """Each module's layer index, through its unit."""
    unit_layer = {u: i for i, (_, units) in enumerate(LAYERS) for u in units}
    return {m: unit_layer[_unit(m)] for m in _graph() if _unit(m) in unit_layer}


def test_every_module_has_a_layer() -> None:
    layer = _layer_of()
    missing = sorted(set(_graph()) - set(layer))
    assert not missing, f"modules whose package has no layer in LAYERS: {missing}"
    units = {u for _, us in LAYERS for u in us}
    gone = sorted(units - {_unit(m) for m in _graph()})
    assert not gone, f"LAYERS names packages or modules that do not exist: {gone}"


def test_no_module_imports_a_higher_layer() -> None:
    layer = _layer_of()
    upward = [
        f"{m} ({LAYERS[layer[m]][0]}) imports {d} ({LAYERS[layer[d]][0]})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if m in layer and d in layer and layer[d] > layer[m]
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from mxnorm_spark.core.state import MXNormState",
            {"core.state", "core.state.MXNormState"},
        ),
        ("if TYPE_CHECKING:\n    from mxnorm_spark.cli.commands import main", set()),
        ("def f():\n    import mxnorm_spark.store", {"store"}),
    ],
)
def test_import_scanner(source: str, expected: set[str]) -> None:
    # The checks above are only as good as the scanner: lazy imports count, typing-only ones not.
    assert _imports(ast.parse(source)) == expected


def test_init_files_only_re_export() -> None:
    # A package's __init__.py names what the package offers; the code lives in its modules.
    defining = []
    for path in sorted(PACKAGE.rglob("__init__.py")):
        for node in ast.parse(path.read_text()).body:
            allowed = isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)) or (
                isinstance(node, ast.Assign)
                and all(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            )
            if not allowed:
                defining.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not defining, "__init__.py files that define more than re-exports: " + ", ".join(
        defining
    )
