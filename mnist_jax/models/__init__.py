"""Flax linen models of the reports, looked up by name.

Each model module registers its models where it defines them:

    @register("cnn")
    class CNN(nn.Module): ...

    register("vgg16", functools.partial(TransferNet, arch="vgg16"))  # a variant

and this package imports every module in it, so `MODELS` is complete
without a list to keep. A model declares its own dropout-rate fields
(`dropout_fields`, a ClassVar): they may be traced arrays, so sweep trials
that differ only in them train together (models.layers.Dropout).
"""

import functools
import importlib
import pkgutil
from collections.abc import Callable

MODELS: dict[str, Callable] = {}  # name -> the linen Module class (or a partial of one)


def register(name: str, factory: Callable | None = None):
    """Registers `factory` (a Module class or a partial of one) under `name`;
    without `factory`, a class decorator."""

    def add(factory):
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = factory
        return factory

    return add if factory is None else add(factory)


def get_model(name: str, **kwargs):
    """Builds the model registered under `name` with its hyperparameters."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


def model_class(name: str) -> type:
    """The Module class behind a registered name (a partial's function)."""
    factory = MODELS[name]
    return factory.func if isinstance(factory, functools.partial) else factory


def dropout_fields(name: str) -> tuple[str, ...]:
    """The model's fields that are dropout rates (its `dropout_fields`)."""
    return tuple(getattr(model_class(name), "dropout_fields", ()))


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
