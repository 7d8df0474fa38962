"""The layout docs/design.md describes, checked on the code: the layers and
their imports (no cycle, no upward import), module and function sizes, and
argparse only in the command-line modules."""

import ast
import pathlib

import pytest

from tests.conftest import ROOT

DESIGN = ROOT / "docs" / "design.md"
TABLE_HEADING = "## Layers and imports"
PACKAGES = ("mnist_jax", "experiments", "benchmarks")
GROUPS = ("mnist_jax.models", "experiments", "benchmarks")  # A row for the package and its files.
ANY_BELOW = "(any module below)"
COMMAND_LINE = {
    "mnist_jax.flags",
    "mnist_jax.cli",
    "mnist_jax.predict",
    "mnist_jax.serve",
    "mnist_jax.export",
    "benchmarks.cli",
    "benchmarks.accelerator",
}
# And every experiments.* module.
HAND_OVER = "experiments.benchmark"  # `python -m experiments.benchmark`: benchmarks.cli's main.
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: pathlib.Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {
    module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def full_name(short: str) -> str:
    """A module as docs/design.md's table names it -> its dotted name."""
    short = short.strip("` ").removesuffix("/").removesuffix(".*")
    return short if short.split(".")[0] in PACKAGES else f"mnist_jax.{short}"


def group_of(name: str) -> str:
    """The table's row of a module: its own, or its package's for the grouped packages."""
    return next((g for g in GROUPS if name == g or name.startswith(f"{g}.")), name)


def read_table() -> tuple[list[str], dict[str, tuple[int, str]]]:
    """docs/design.md's table of layers: (the layers bottom to top,
    {row's module: (layer index, what it imports)})."""
    text = DESIGN.read_text()
    assert TABLE_HEADING in text, f"docs/design.md has no '{TABLE_HEADING}' section"
    layers, rows = [], {}
    for line in text.split(TABLE_HEADING, 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        layer, module, imports = cells
        if layer not in layers:
            layers.append(layer)
        rows[full_name(module)] = (layers.index(layer), imports)
    return layers, rows


LAYER_NAMES, TABLE = read_table()


def layer_of(name: str) -> int:
    row = group_of(name)
    if row not in TABLE:
        pytest.fail(f"{name} is in no layer: add its row to docs/design.md's '{TABLE_HEADING}'")
    return TABLE[row][0]


def documented_imports(row: str) -> set[str] | None:
    """What docs/design.md says a row imports (None: any module below)."""
    imports = TABLE[row][1]
    if imports == ANY_BELOW:
        return None
    return {full_name(i) for i in imports.split(",") if i.strip() not in ("", "—")}


def actual_imports(row: str) -> set[str]:
    """The rows the modules of `row` import, outside the row itself."""
    members = [name for name in MODULES if group_of(name) == row]
    found = {group_of(t) for name in members for t in project_imports(name)}
    return {t for t in found if t != row and not row.startswith(f"{t}.")}


def project_imports(name: str) -> set[str]:
    """The project modules `name` imports (anywhere in it, functions too)."""
    found = set()
    for node in ast.walk(TREES[name]):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        found |= {t for t in targets if t.split(".")[0] in PACKAGES and t != name}
    return {t for t in found if t in MODULES}


def test_no_module_imports_one_above_it():
    upward = [
        f"{name} ({LAYER_NAMES[layer_of(name)]}) imports {target} ({LAYER_NAMES[layer_of(target)]})"
        for name in MODULES
        for target in project_imports(name)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward


def test_the_design_docs_table_says_what_each_module_imports():
    """docs/design.md's table is the layout: every module has its row, and a
    row lists exactly what its module imports (`python -m tests.test_layout`
    prints the rows as the code has them)."""
    assert {group_of(name) for name in MODULES} == set(TABLE), (
        "rows without modules or modules without rows"
    )
    wrong = {
        row: (sorted(documented_imports(row)), sorted(actual_imports(row)))
        for row in TABLE
        if documented_imports(row) is not None and documented_imports(row) != actual_imports(row)
    }
    assert wrong == {}, "docs/design.md (documented, actual): " + repr(wrong)


def test_there_is_no_import_cycle():
    graph = {name: project_imports(name) for name in MODULES}
    # A module's own package __init__ runs first when it is imported: not an edge back.
    graph = {
        name: {t for t in targets if not name.startswith(f"{t}.")}
        for name, targets in graph.items()
    }
    state: dict[str, str] = {}

    def visit(name, path):
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_modules_and_functions_fit_on_a_screen_or_a_few():
    long_modules = {name: len(MODULES[name].read_text().splitlines()) for name in MODULES}
    assert {n: lines for n, lines in long_modules.items() if lines > MAX_MODULE_LINES} == {}
    long_functions = {
        f"{name}.{node.name}": node.end_lineno - node.lineno + 1
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long_functions == {}


def imports_argparse(name: str) -> bool:
    return any(
        isinstance(node, ast.Import)
        and any(a.name == "argparse" for a in node.names)
        or isinstance(node, ast.ImportFrom)
        and node.module == "argparse"
        for node in ast.walk(TREES[name])
    )


def test_argparse_is_only_in_the_command_line_modules():
    parsing = {name for name in MODULES if imports_argparse(name)}
    assert "mnist_jax.cli" in parsing
    assert {
        n for n in parsing if not n.startswith("experiments") and n not in COMMAND_LINE
    } == set()


def test_the_library_never_imports_the_experiments():
    assert {
        name: sorted(t for t in project_imports(name) if t.startswith("experiments"))
        for name in MODULES
        if name.startswith("mnist_jax")
        and any(t.startswith("experiments") for t in project_imports(name))
    } == {}


def imported_packages(name: str) -> set[str]:
    """The top-level packages `name` imports (anywhere in it)."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_torch_is_imported_by_torch_models_alone_which_no_library_module_imports():
    """mnist_jax.torch_models is the PyTorch definitions a user copies; the
    rest of the library runs without torch (the benchmarks and tests may
    import both)."""
    library = [name for name in MODULES if name.split(".")[0] == "mnist_jax"]
    assert {name for name in library if "torch" in imported_packages(name)} == {
        "mnist_jax.torch_models"
    }
    assert [name for name in library if "mnist_jax.torch_models" in project_imports(name)] == []


def test_only_the_benchmark_command_imports_the_measuring_harness():
    assert any(name.startswith("benchmarks.") for name in MODULES)
    importers = {
        name: sorted(t for t in project_imports(name) if t.split(".")[0] == "benchmarks")
        for name in MODULES
        if not name.startswith("benchmarks")
    }
    assert {name: found for name, found in importers.items() if found} == {
        HAND_OVER: ["benchmarks.cli"]
    }


def test_a_command_imports_only_what_it_uses():
    """Start-up is part of every command's wait: training imports neither
    torch (installed here by the test extra; tensorboardX would import it),
    nor matplotlib before its first figure, nor tensorflow_datasets with MNIST
    cached; predict neither."""
    import importlib.util
    import subprocess
    import sys

    assert importlib.util.find_spec("torch") is not None, (
        "the test extra installs torch; this test needs it"
    )
    code = (
        "import sys, tempfile; import experiments.cnn, mnist_jax.predict; "
        "from mnist_jax import summaries; "
        "w = summaries.MetricWriter(tempfile.mkdtemp()); w.scalars(1, {'a': 1.0}); w.close(); "
        "print([m for m in ('torch', 'matplotlib', 'tensorflow_datasets', 'wandb') "
        "if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _own_nodes(function: ast.FunctionDef | ast.AsyncFunctionDef):
    """The nodes of `function`'s body, leaving out those of the functions,
    lambdas and classes defined in it."""
    stack = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _public_functions(tree: ast.Module):
    """(name, node, parameter count) of a module's public functions and of
    its public classes' public methods, self and cls not counted."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    found = [(n.name, n, False) for n in tree.body if isinstance(n, functions)]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            found += [
                (f"{node.name}.{m.name}", m, True) for m in node.body if isinstance(m, functions)
            ]
    for name, function, is_method in found:
        if not name.split(".")[-1].startswith("_"):
            a = function.args
            parameters = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
            if is_method and parameters[:1] in (["self"], ["cls"]):
                parameters = parameters[1:]
            yield name, function, len(parameters)


def _sections_needed(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Args:, and Yields: for a generator or Returns: where it returns a value."""
    nodes = list(_own_nodes(function))
    if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in nodes):
        return ["Args:", "Yields:"]
    returns = any(
        isinstance(n, ast.Return)
        and n.value is not None
        and not (isinstance(n.value, ast.Constant) and n.value.value is None)
        for n in nodes
    )
    return ["Args:", "Returns:"] if returns else ["Args:"]


def test_public_functions_of_more_than_four_parameters_document_them():
    """A public function or method of more than four parameters (self and
    cls aside; positional and keyword-only alike) says what each is in an
    Args: section, and what it gives back in Returns: (Yields: for a
    generator), unless it returns nothing."""
    offenders = []
    for module, tree in TREES.items():
        for name, function, parameters in _public_functions(tree):
            docstring = ast.get_docstring(function) or ""
            missing = [s for s in _sections_needed(function) if s not in docstring]
            if parameters > 4 and missing:
                offenders.append(f"{module}.{name} lacks {' and '.join(missing)}")
    assert not offenders, "\n".join(offenders)


def table_rows() -> str:
    """The table's rows as the code has them, to paste into docs/design.md
    (a module without a row yet gets layer "?")."""

    def short(name: str) -> str:
        return name.removeprefix("mnist_jax.") if name != "mnist_jax" else name

    rows = sorted({group_of(name) for name in MODULES}, key=lambda r: (TABLE.get(r, (99,))[0], r))
    lines = []
    for row in rows:
        layer, imports = TABLE.get(row, (None, ""))
        shown = (
            ANY_BELOW
            if imports == ANY_BELOW
            else ", ".join(sorted(map(short, actual_imports(row))))
        )
        lines.append(
            f"| {'?' if layer is None else LAYER_NAMES[layer]} | {short(row)} | {shown or '—'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table_rows())
