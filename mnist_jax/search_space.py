"""A hyperparameter sweep declared in code: its space, its trials, their groups.

    sweep = SweepConfig(
        base=TrainConfig(model="simple_cnn", epochs=5),
        space={"learning_rate": LogUniform(3e-4, 3e-3), "model.dropout": Choice((0.1, 0.25, 0.5))},
        method="random", num_trials=8)
    trials = make_trials(sweep)        # Trial(index, params, config, model_kwargs)
    groups = group_trials(trials)      # trials that can train together

A parameter is a TrainConfig field ("learning_rate", "batch_size",
"optimizer", "epochs", "seed", ...) or a model field ("model.dropout"). The
search is "grid" (every combination of value lists) or "random" (num_trials
draws, reproducible from sample_seed). The same names and spec strings
("log:1e-4:1e-2") work from the command line (parse_param).

Trials that differ only in BATCHED values (learning rate, weight decay,
seed, dropout rates) share array shapes and one program, so they form one
group and train at once (mnist_jax.sweep); any other difference (batch size,
epochs, optimizer, ...) starts a new group.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mnist_jax.config import TrainConfig
from mnist_jax.models import dropout_fields, model_class

METHODS = ("grid", "random")
MODEL_PREFIX = "model."
# TrainConfig fields a trial may set: the ones that describe training, not
# the run's bookkeeping, data subset or model.
CONFIG_PARAMS = (
    "learning_rate",
    "weight_decay",
    "batch_size",
    "optimizer",
    "epochs",
    "seed",
    "momentum",
    "schedule",
    "dtype",
)
# Values that can differ between the trials of one group: the learning rate
# and weight decay live in the optimizer state (optax.inject_hyperparams),
# the seed in the keys and the data order. A cosine schedule bakes its peak
# learning rate into the program, so there the rate starts a new group.
BATCHED_CONFIG_FIELDS = ("learning_rate", "weight_decay", "seed")


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a list of values; the only kind a grid accepts."""

    values: tuple

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high)."""

    low: float
    high: float

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got {self.low}, {self.high}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A float whose logarithm is uniform on [log low, log high): for rates."""

    low: float
    high: float

    def __post_init__(self):
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


Distribution = Choice | Uniform | LogUniform


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A sweep: the base settings, the space searched, and how.

    Attributes:
      base: the settings every trial starts from. Its data seed (split_seed,
        else seed) splits the data once for all trials.
      space: parameter name -> distribution, in the order a grid iterates.
      method: "grid" or "random".
      num_trials: random: how many trials (required); grid: at most this
        many of the combinations (None: all).
      sample_seed: seeds the random draws, apart from the trials' seeds.
      model_kwargs: the model's hyperparameters before the sweep's.
    """

    base: TrainConfig
    space: Mapping[str, Distribution]
    method: str = "random"
    num_trials: int | None = None
    sample_seed: int = 0
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "space", dict(self.space))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        if self.method not in METHODS:
            raise ValueError(f"unknown sweep method {self.method!r}; choose one of {METHODS}")
        if not self.space:
            raise ValueError("the sweep's space is empty: give at least one parameter")
        if self.num_trials is not None and self.num_trials < 1:
            raise ValueError(f"the number of trials must be >= 1, got {self.num_trials}")
        if self.method == "random" and self.num_trials is None:
            raise ValueError("a random sweep needs num_trials")
        for name, dist in self.space.items():
            check_param_name(name, self.base.model)
            if not isinstance(dist, (Choice, Uniform, LogUniform)):
                raise ValueError(f"{name}: expected Choice, Uniform or LogUniform, got {dist!r}")
            if self.method == "grid" and not isinstance(dist, Choice):
                raise ValueError(
                    f"a grid needs a list of values for every parameter; {name} is "
                    f"{dist}. Give values, or use the random method."
                )

    def to_dict(self) -> dict:
        return {
            "base": self.base.to_dict(),
            "method": self.method,
            "num_trials": self.num_trials,
            "sample_seed": self.sample_seed,
            "model_kwargs": self.model_kwargs,
            "space": {
                name: {"kind": type(d).__name__, **dataclasses.asdict(d)}
                for name, d in self.space.items()
            },
        }


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of the space: its values, and the full settings they give."""

    index: int
    params: Mapping[str, Any]  # The swept values, by parameter name.
    config: TrainConfig
    model_kwargs: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"trial_{self.index:02d}"


def model_fields(model: str) -> dict[str, Any]:
    """A registered model's hyperparameter fields and their defaults."""
    return {
        f.name: f.default
        for f in dataclasses.fields(model_class(model))
        if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING
    }


def check_param_name(name: str, model: str) -> None:
    """Raises ValueError, listing the valid names, for an unknown parameter."""
    if name.startswith(MODEL_PREFIX):
        fields = model_fields(model)
        if name.removeprefix(MODEL_PREFIX) not in fields:
            raise ValueError(
                f"{model} has no hyperparameter {name.removeprefix(MODEL_PREFIX)!r}; "
                f"it has {sorted(fields)} (as model.<name>)"
            )
    elif name not in CONFIG_PARAMS:
        raise ValueError(
            f"cannot sweep {name!r}; sweepable: {', '.join(CONFIG_PARAMS)}, or model.<field>"
        )


def _typed(name: str, value: Any, model: str) -> Any:
    """`value` as the type of the field it sets (CLI strings, numpy scalars)."""
    default = (
        model_fields(model)[name.removeprefix(MODEL_PREFIX)]
        if name.startswith(MODEL_PREFIX)
        else getattr(TrainConfig(), name)
    )
    kind = type(default) if default is not None else float
    if kind is bool or kind is str:
        return str(value)
    if kind in (tuple, list):  # A width per layer: (16, 32), or "16x32" from the command line.
        parts = value.split("x") if isinstance(value, str) else value
        try:
            return tuple(int(v) for v in parts)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: {value!r} is not a list of whole numbers, e.g. 16x32"
            ) from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if kind is int:
        if number != int(number):
            raise ValueError(f"{name}: {value!r} is not a whole number")
        return int(number)
    return number


def make_trials(sweep: SweepConfig) -> list[Trial]:
    """The sweep's trials in order: grid combinations, or random draws."""
    names = list(sweep.space)
    if sweep.method == "grid":
        points = itertools.product(*(sweep.space[n].values for n in names))
        points = list(itertools.islice(points, sweep.num_trials))
    else:
        rng = np.random.default_rng(sweep.sample_seed)
        points = [[sweep.space[n].sample(rng) for n in names] for _ in range(sweep.num_trials)]
    model = sweep.base.model
    trials = []
    for index, values in enumerate(points):
        params = {n: _typed(n, v, model) for n, v in zip(names, values)}
        overrides = {n: v for n, v in params.items() if not n.startswith(MODEL_PREFIX)}
        model_kwargs = {
            **sweep.model_kwargs,
            **{
                n.removeprefix(MODEL_PREFIX): v
                for n, v in params.items()
                if n.startswith(MODEL_PREFIX)
            },
        }
        for field in dropout_fields(model):
            if field in model_kwargs and not 0 <= model_kwargs[field] < 1:
                raise ValueError(
                    f"trial {index}: model.{field} must be in [0, 1), got {model_kwargs[field]}"
                )
        try:
            config = dataclasses.replace(sweep.base, split_seed=sweep.base.data_seed, **overrides)
        except ValueError as e:
            raise ValueError(f"trial {index} ({params}): {e}") from None
        trials.append(Trial(index, params, config, model_kwargs))
    return trials


def batched_fields(trial: Trial) -> tuple[set[str], set[str]]:
    """(config fields, model fields) of a trial that may differ within its group."""
    config = set(BATCHED_CONFIG_FIELDS)
    if trial.config.schedule != "constant":
        config.discard("learning_rate")
    return config, set(dropout_fields(trial.config.model))


def group_key(trial: Trial) -> str:
    """Equal for trials that can train in one program: everything but the batched values."""
    config_fields, model_fields_ = batched_fields(trial)
    config = {k: v for k, v in trial.config.to_dict().items() if k not in config_fields}
    model = {k: v for k, v in trial.model_kwargs.items() if k not in model_fields_}
    return json.dumps({"config": config, "model": model}, sort_keys=True, default=str)


def group_trials(trials: list[Trial], max_group_size: int | None = None) -> list[list[Trial]]:
    """Trials grouped by group_key, in order of their first trial; groups
    larger than `max_group_size` (memory) are cut into consecutive parts."""
    if max_group_size is not None and max_group_size < 1:
        raise ValueError(f"max_group_size must be >= 1, got {max_group_size}")
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(group_key(trial), []).append(trial)
    size = max_group_size or max(len(g) for g in groups.values())
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def parse_param(spec: str, model: str) -> tuple[str, Distribution]:
    """ "NAME=SPEC" from the command line -> (name, distribution).

    SPEC is "a,b,c" (a Choice), "log:LOW:HIGH" (LogUniform) or
    "uniform:LOW:HIGH" (Uniform); e.g. "learning_rate=log:1e-4:1e-2",
    "batch_size=64,128", "model.dropout=0.1,0.25,0.5", and for per-layer
    widths "model.features=16x32,32x64".
    """
    name, sep, values = spec.partition("=")
    name = name.strip().replace("-", "_") if not name.startswith(MODEL_PREFIX) else name.strip()
    if not sep or not name or not values:
        raise ValueError(
            f"--param {spec!r}: expected NAME=SPEC, e.g. learning_rate=log:1e-4:1e-2 "
            "or batch_size=64,128"
        )
    check_param_name(name, model)
    kind, _, bounds = values.partition(":")
    if kind in ("log", "uniform"):
        try:
            low, high = (float(b) for b in bounds.split(":"))
        except ValueError:
            raise ValueError(
                f"--param {spec!r}: expected {kind}:LOW:HIGH with two numbers"
            ) from None
        return name, (LogUniform if kind == "log" else Uniform)(low, high)
    return name, Choice(tuple(_typed(name, v.strip(), model) for v in values.split(",")))
