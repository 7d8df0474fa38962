"""The registry of experiments: `python -m experiments.<name>` runs one.

Every module of this package whose name does not start with "_" is an
experiment: it holds its config, the report's reference numbers and a
`main()`, and its docstring's first line says what it reproduces. The
registry is read from the files, so adding an experiment is adding its
module; `python -m experiments` lists them without importing any.
"""

import ast
import importlib
import pathlib

_HERE = pathlib.Path(__file__).parent


def names() -> list[str]:
    """Every experiment's name, sorted."""
    return sorted(p.stem for p in _HERE.glob("[a-z]*.py"))


def summaries() -> dict[str, str]:
    """name -> the first line of its docstring (read, not imported: instant)."""
    return {
        name: (ast.get_docstring(ast.parse((_HERE / f"{name}.py").read_text())) or "").splitlines()[
            0
        ]
        for name in names()
    }


def model_experiments() -> dict:
    """name -> CONFIG of the experiments that train one registered model
    under its own name (cnn, vit, vgg16, ...): their module has CONFIG and
    QUICK TrainConfigs of that model, REFERENCE and main(). Compare, the
    benchmark and the tests derive their lists from here."""
    from mnist_jax.config import TrainConfig
    from mnist_jax.models import MODELS

    found = {}
    for name in names():
        if name not in MODELS:
            continue
        module = importlib.import_module(f"experiments.{name}")
        config = getattr(module, "CONFIG", None)
        if (
            isinstance(config, TrainConfig)
            and config.model == name
            and isinstance(getattr(module, "QUICK", None), TrainConfig)
        ):
            found[name] = config
    return found


def classifier_experiments() -> tuple[str, ...]:
    """The model experiments whose model classifies MNIST images (compare's rows)."""
    return tuple(
        name for name, config in model_experiments().items() if config.step_config().classifies
    )
