"""Config fields declared once: each with its help, and the flag it makes.

A config dataclass (mnist_jax.config.TrainConfig and the settings nested in
it: tasks.StepConfig, augment.AugmentConfig, pipeline.NoiseConfig) declares
each field with `setting(default, help, ...)`. A field given a flag `group`
becomes a command-line flag (mnist_jax.cli builds them with argparse) whose
help shows the value it overrides; `flags(cls)` lists them, nested settings
included, each with the field's dotted path ("epochs", "augment.rotation"),
and `replace_paths` turns the flags given back into a config. Adding a
field that a flag sets is one `setting(...)` line.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any


def setting(
    default: Any,
    help: str,
    *,
    group: str | None = None,
    flags: tuple[str, ...] = (),
    metavar: str | None = None,
    choices: tuple | None = None,
):
    """A dataclass field with its help; with a `group`, also a flag.

    Args:
      default: the field's default (immutable: a number, a string, a tuple,
        a frozen dataclass).
      help: what the field is, in a phrase; the flag's help, and the field's
        documentation.
      group: the flags it joins (mnist_jax.cli: "recipe", "experiment",
        "run"); None: no flag.
      flags: the flag's names (default: "--" and the field's name with
        dashes); the first one names the argparse destination.
      metavar: the flag's value as the help shows it.
      choices: the values the flag accepts.

    Returns:
      A `dataclasses.field`.
    """
    metadata = {
        "help": help,
        "group": group,
        "flags": flags,
        "metavar": metavar,
        "choices": choices,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Flag:
    """A config field's command-line flag."""

    path: str  # The field's dotted path in the config: "epochs", "augment.rotation".
    names: tuple[str, ...]  # "--learning-rate", "--lr".
    type: type  # Of the value: int, float or str.
    help: str
    group: str
    metavar: str | None = None
    choices: tuple | None = None

    @property
    def dest(self) -> str:
        """The argparse destination: "learning_rate" for --learning-rate."""
        return self.names[0].removeprefix("--").replace("-", "_")

    def value(self, config) -> Any:
        """The value this flag overrides in `config`."""
        return functools.reduce(getattr, self.path.split("."), config)


def flags(cls: type, prefix: str = "") -> list[Flag]:
    """The flags of `cls`'s fields, nested settings' too, in the order the
    fields are declared: the class's own first, then those it inherits
    (TrainConfig's epochs and batch size before StepConfig's augmentation)."""
    hints = typing.get_type_hints(cls)
    own = set(cls.__dict__.get("__annotations__", {}))
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)  # Stable.
    found = []
    for field in fields:
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            found += flags(kind, f"{prefix}{field.name}.")
        elif field.metadata.get("group"):
            meta = field.metadata
            names = meta["flags"] or (f"--{field.name.replace('_', '-')}",)
            found.append(
                Flag(
                    f"{prefix}{field.name}",
                    names,
                    _scalar(kind),
                    meta["help"],
                    meta["group"],
                    meta["metavar"],
                    meta["choices"],
                )
            )
    return found


def _scalar(kind) -> type:
    """int for `int` and `int | None`; the flag's value type."""
    options = [k for k in typing.get_args(kind) if k is not type(None)] or [kind]
    return options[0]


def help_of(cls: type, name: str) -> str:
    """The help of `cls`'s field `name`."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def replace_paths(config, values: dict[str, Any]):
    """`config` with the fields at dotted paths set, nested settings
    rebuilt (and validated) with theirs: {"epochs": 3, "augment.rotation": 15}."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = replace_paths(getattr(config, head), inner)
    return dataclasses.replace(config, **top)
