"""The layout docs/design.md describes, checked on the code: the layers and
their imports (no cycle, no upward import), module and function sizes, and
argparse only in the command-line modules."""

import ast
import pathlib

import pytest

from tests.conftest import ROOT

# Bottom to top, as in docs/design.md. A module may import modules of its
# own layer or below, never above; `mnist_jax.models.*` is one layer, every
# `experiments.*` and `benchmarks.*` module the top one (and nothing but
# experiments.benchmark, the command's hand-over, imports `benchmarks`).
LAYERS = [
    (
        "foundations",
        {
            "mnist_jax",
            "mnist_jax.xla_defaults",
            "mnist_jax.files",
            "mnist_jax.fields",
            "mnist_jax.precision",
            "mnist_jax.parallel",
            "mnist_jax.metrics",
            "mnist_jax.digits",
            "mnist_jax.canvas",
            "mnist_jax.charts",
            "mnist_jax.image_grids",
            "mnist_jax.confusion_figures",
            "mnist_jax.viz",
            "mnist_jax.summaries",
            "mnist_jax.checkpoints",
            "mnist_jax.wandb_log",
            "mnist_jax.data",
            "mnist_jax.pipeline",
            "mnist_jax.faults",
            "mnist_jax.progress",
            "mnist_jax.caches",
            "mnist_jax.timing",
            "mnist_jax.augment",
            "mnist_jax.reference",
            "mnist_jax.onednn",
        },
    ),
    (
        "data and models",
        {
            "mnist_jax.idx",
            "mnist_jax.sources",
            "mnist_jax.data_stats",
            "mnist_jax.tasks",
            "mnist_jax.models",
            "mnist_jax.pretrained",
        },
    ),
    ("config", {"mnist_jax.config", "mnist_jax.options"}),
    (
        "steps",
        {"mnist_jax.optim", "mnist_jax.steps", "mnist_jax.search_space", "mnist_jax.inspection"},
    ),
    (
        "loop",
        {
            "mnist_jax.placement",
            "mnist_jax.members",
            "mnist_jax.records",
            "mnist_jax.loop",
            "mnist_jax.rundir",
            "mnist_jax.figures",
            "mnist_jax.denoising",
            "mnist_jax.trial_group",
            "mnist_jax.sweep_report",
        },
    ),
    (
        "runs",
        {"mnist_jax.train", "mnist_jax.sweep", "mnist_jax.frozen_features", "mnist_jax.predict"},
    ),
    ("command line", {"mnist_jax.flags", "mnist_jax.cli", "experiments", "benchmarks"}),
]
PACKAGES = ("mnist_jax", "experiments", "benchmarks")
# And every experiments.* module.
COMMAND_LINE = {"mnist_jax.flags", "mnist_jax.cli", "mnist_jax.predict", "benchmarks.cli"}
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


def layer_of(name: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if name in members or any(name.startswith(f"{m}.") for m in members if m != "mnist_jax"):
            return index
    pytest.fail(
        f"{name} is in no layer: place it in tests/test_layout.py LAYERS and docs/design.md"
    )


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
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name in MODULES
        for target in project_imports(name)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward


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
