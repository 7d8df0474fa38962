"""Finished runs on disk: load one back for inspection, or find many to compare.

A run directory is what `train.train_and_evaluate` writes: metrics.json
(config, model hyperparameters, results) and checkpoints/.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import flax.linen as nn

from mnist_jax import models
from mnist_jax.checkpoints import CheckpointError
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.train import ResumeError, TrainConfig, TrainState, restore_best_state


class RunError(Exception):
    """A directory that does not hold a usable finished run."""


def config_from_dict(saved: dict) -> TrainConfig:
    """The TrainConfig that `TrainConfig.to_dict` wrote (as metrics.json holds it)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise RunError(f"config fields {unknown} are unknown to this version of mnist_jax "
                       "(the run was written by a newer one?)")
    values = dict(saved)
    if isinstance(values.get("noise"), dict):
        values["noise"] = NoiseConfig(**values["noise"])
    return TrainConfig(**values)


def read_summary(run_dir: str | pathlib.Path) -> dict:
    """A run's metrics.json, or RunError saying what is missing."""
    path = pathlib.Path(run_dir).expanduser() / "metrics.json"
    if not path.is_file():
        raise RunError(f"{path.parent} has no metrics.json: not a finished run directory "
                       "(train one with python -m experiments.<name> --workdir DIR)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e})") from e


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    summary: dict  # metrics.json
    config: TrainConfig
    model: nn.Module
    state: TrainState  # The best checkpoint: the one metrics.json's test scores are of.


def load_run(run_dir: str | pathlib.Path) -> LoadedRun:
    """The best checkpoint of a finished run, with its model rebuilt from metrics.json."""
    run_dir = pathlib.Path(run_dir).expanduser()
    summary = read_summary(run_dir)
    if summary.get("cached_features"):
        raise RunError(f"{run_dir} trained the classifier alone on cached features: its checkpoint "
                       "holds no convolutions. Train with --no-cache-features to inspect them.")
    config = config_from_dict(summary["config"])
    hyperparameters = {k: _hashable(v) for k, v in summary["model"].get("hyperparameters", {}).items()}
    try:
        model = models.get_model(config.model, **hyperparameters)
        state = restore_best_state(config, model, run_dir)
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
