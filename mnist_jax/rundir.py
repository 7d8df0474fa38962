"""The run directory: what a training run leaves on disk, written and read here.

    <workdir>/metrics.json    the summary: config, model, data, test scores,
                              history, timings, devices, versions
    <workdir>/checkpoints/    latest/ and best/ (mnist_jax.checkpoints)
    <workdir>/tensorboard/    events (mnist_jax.summaries)
    <workdir>/*.png           figures (mnist_jax.figures)

This module is the one writer of metrics.json (`write_summary`, and
`add_to_summary` for experiments that add to a finished run's), and its
reader: `read_summary`, `load_run` (the best checkpoint with its model
rebuilt), `find_summaries` (every summary under a folder).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mnist_jax import checkpoints, models, parallel
from mnist_jax.checkpoints import CheckpointError
from mnist_jax.config import ResumeError, TrainConfig, config_differences, config_from_dict
from mnist_jax.files import write_json
from mnist_jax.optim import make_optimizer
from mnist_jax.steps import TrainState, averaged, count_params, create_train_state

DEFAULT_RUNS_DIR = pathlib.Path("runs")  # Where runs land unless a --workdir is given.
SUMMARY = "metrics.json"
# Measured while training; checkpoint_seconds is part of train_seconds.
TIMINGS = (
    "train_seconds",
    "compile_seconds",
    "first_step_seconds",
    "checkpoint_seconds",
    "phase_seconds",
)


class RunError(Exception):
    """A directory that does not hold a usable finished run."""


def model_hyperparameters(model: nn.Module) -> dict:
    """The module's own fields (JSON-ready), to rebuild it from metrics.json."""
    return {
        f.name: list(v) if isinstance(v := getattr(model, f.name), tuple) else v
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def make_summary(
    *,
    experiment: str,
    config: TrainConfig,
    model: nn.Module,
    params,
    splits,
    test: dict,
    fit_result: dict,
    devices: dict,
    extra: dict | None = None,
) -> dict:
    """metrics.json's contents for a finished run.

    Args:
      experiment: the experiment's name.
      config: the run's settings.
      model: the trained module; its fields rebuild it (load_run).
      params: the trained parameters, counted; those of `config.trainable`
        (all, where it is empty) as the trainable ones.
      splits: the run's Splits; their sizes are recorded.
      test: the best checkpoint's test scores.
      fit_result: what `loop.fit` returned: its "best", "history",
        "data_placement" and timings are recorded.
      devices: the devices the run used (parallel.describe).
      extra: more entries, added at the top level; None: none.

    Returns:
      The summary, JSON-ready.
    """
    select_key = config.step_config().selection[0]
    trainable = {k: v for k, v in params.items() if not config.trainable or k in config.trainable}
    return {
        "experiment": experiment,
        "config": config.to_dict(),
        "model": {
            "name": config.model,
            "hyperparameters": model_hyperparameters(model),
            "parameters": count_params(params),
            "trainable_parameters": count_params(trainable),
        },
        "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "test": test,
        "evaluated_checkpoint": {"kind": f"best_{select_key}", **fit_result["best"]},
        "history": fit_result["history"],
        **{k: fit_result[k] for k in TIMINGS if k in fit_result},
        "devices": devices,
        "data_placement": fit_result["data_placement"],
        "versions": {"jax": jax.__version__, "flax": _version("flax"), "optax": optax.__version__},
        **(extra or {}),
    }


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
    """Writes metrics.json atomically (process 0 only, where several run)."""
    if parallel.is_main_process():
        write_json(pathlib.Path(workdir) / SUMMARY, summary)


def add_to_summary(workdir: pathlib.Path, summary: dict, **fields) -> dict:
    """`summary` (the run's metrics.json) with `fields` added or replaced,
    written back; returns it."""
    updated = {**summary, **fields}
    write_summary(workdir, updated)
    return updated


def is_finished(run_dir: str | pathlib.Path) -> bool:
    """Whether `run_dir` holds a finished run (its metrics.json is written last)."""
    return (pathlib.Path(run_dir).expanduser() / SUMMARY).is_file()


def read_summary(run_dir: str | pathlib.Path) -> dict:
    """A run's metrics.json, or RunError saying what is missing."""
    path = pathlib.Path(run_dir).expanduser() / SUMMARY
    if not path.is_file():
        raise RunError(
            f"{path.parent} has no {SUMMARY}: not a finished run directory "
            "(train one with python -m experiments.<name> --workdir DIR)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e})") from e


def restore_best_state(
    config: TrainConfig,
    model: nn.Module,
    workdir: str | pathlib.Path,
    mesh: jax.sharding.Mesh | None = None,
    sample_shape: tuple[int, ...] = (1, 28, 28, 1),
    *,
    average: bool = True,
) -> TrainState:
    """The best checkpoint of a run in `workdir` that was trained with
    `config`, as it was scored.

    Raises ResumeError when `workdir` holds no checkpoint, or one trained
    with other settings.

    Args:
      config: the settings the run was trained with.
      model: the module it trained.
      workdir: the run directory.
      mesh: the devices the state is replicated over; None: every device.
      sample_shape: the shape of the model's input, to trace the state's
        structure (the default: one MNIST image).
      average: the moving average in place of the raw weights where the run
        kept one (steps.averaged); False: the raw weights.

    Returns:
      The best state, replicated over `mesh`.
    """
    workdir = pathlib.Path(workdir).expanduser()
    if not checkpoints.has_checkpoints(workdir):
        raise ResumeError(f"{workdir} holds no checkpoints of a training run")
    mesh = mesh or parallel.data_mesh()
    # The target's shapes, dtypes and shardings, traced but neither compiled
    # nor run: the restore fills it. steps_per_epoch only sets a cosine
    # schedule's length, not the state's structure.
    tx = make_optimizer(config, steps_per_epoch=1)
    shapes = jax.eval_shape(
        lambda: create_train_state(
            model, tx, config.seed, jnp.zeros(sample_shape, jnp.float32), ema=config.ema_decay > 0
        )
    )
    replicated = parallel.replicated(mesh)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes
    )
    with checkpoints.RunCheckpoints(
        workdir, keep_latest=config.keep_checkpoints, keep_best=config.keep_best
    ) as ckpts:
        state, meta = ckpts.restore_best(target)
    detail = config_differences(meta["config"], config)
    if detail:
        raise ResumeError(f"the run in {workdir} was trained with other settings ({detail})")
    return averaged(state) if average else state


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    summary: dict  # metrics.json
    config: TrainConfig
    model: nn.Module
    state: TrainState  # The best checkpoint: the one metrics.json's test scores are of.


def load_run(run_dir: str | pathlib.Path, *, average: bool = True) -> LoadedRun:
    """The best checkpoint of a finished run, with its model rebuilt from
    metrics.json; `average`: with the weights' moving average in place of the
    raw weights where the run kept one (False: the raw weights)."""
    run_dir = pathlib.Path(run_dir).expanduser()
    summary = read_summary(run_dir)
    if summary.get("cached_features"):
        raise RunError(
            f"{run_dir} trained the classifier alone on cached features: its checkpoint "
            "holds no convolutions. Train with --no-cache-features to inspect them."
        )
    try:
        config = config_from_dict(summary["config"])
    except ValueError as e:
        raise RunError(str(e)) from e
    hyperparameters = {
        k: _hashable(v) for k, v in summary["model"].get("hyperparameters", {}).items()
    }
    try:
        model = models.get_model(config.model, **hyperparameters)
        state = restore_best_state(config, model, run_dir, average=average)
    except (CheckpointError, ResumeError, TypeError, ValueError) as e:
        raise RunError(f"cannot load the best checkpoint of {run_dir}: {e}") from e
    return LoadedRun(summary, config, model, state)


RUN_KEYS = ("experiment", "config", "test")


def find_summaries(root: str | pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    """(file, summary) of every run summary under `root`, sorted by path.

    A summary is a JSON object with "experiment", "config" and "test": every
    metrics.json, and copies of them under other names (results/*.json).
    Other JSON files are passed over; unreadable ones with a warning.
    """
    found = []
    for path in sorted(pathlib.Path(root).expanduser().rglob("*.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            print(f"warning: skipping {path}: {e}")
            continue
        if isinstance(summary, dict) and all(k in summary for k in RUN_KEYS):
            found.append((path, summary))
    return found
