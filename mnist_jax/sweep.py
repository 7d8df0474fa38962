"""Run a sweep: its groups of trials trained together, the best kept, every trial reported.

Each group's trials (mnist_jax.search_space.group_trials) train as one
`trial_group.TrialGroup` through the same epoch loop as a plain run
(mnist_jax.loop.train_members): its placement, logging, checkpoint policy,
faults and signals. Each trial is one TensorBoard run
(`tensorboard/trial_XX`) with its scalars and its hyperparameters and final
metrics for the HParams dashboard. A group checkpoints its stacked state
(and its trials' best states apart), so an interrupted sweep resumes where
it stopped; finished groups are not trained again. The best trial by
validation accuracy (lowest validation loss for autoencoders), never by
test, is saved as an ordinary run in `best/` and scored on the test set.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import checkpoints, parallel, pipeline, rundir, summaries, viz
from mnist_jax.checkpoints import CheckpointPolicy
from mnist_jax.config import ResumeError, flat_hparams
from mnist_jax.data import Splits
from mnist_jax.files import write_json
from mnist_jax.loop import train_members
from mnist_jax.models import get_model
from mnist_jax.optim import make_optimizer
from mnist_jax.options import RunOptions
from mnist_jax.search_space import SweepConfig, Trial, group_trials, make_trials
from mnist_jax.steps import TrainState, averaged, score_split
from mnist_jax.sweep_report import trial_rows, write_csv
from mnist_jax.tasks import StepConfig
from mnist_jax.trial_group import TrialGroup, group_model, init_trial_states, resolve_strategy, take


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs, besides its config, data and folder (none of it
    changes a trial's numbers beyond float rounding).

    strategy: how a group's trials share one step (trial_group.STRATEGIES).
    max_group_size: at most this many trials train together (None: as many
      as group_trials puts together).
    budget_seconds: no group but the first starts once this much time has
      passed (the trials of groups not run are listed as skipped).
    resume: continue an interrupted sweep; finished groups are not trained again.
    progress: a progress bar on a terminal.
    mesh: the devices (default: all).
    on_group: called with each finished group's trials and result (W&B).
    """

    strategy: str = "auto"
    max_group_size: int | None = None
    budget_seconds: float | None = None
    resume: bool = False
    progress: bool = True
    mesh: jax.sharding.Mesh | None = None
    on_group: Callable[[list[Trial], dict], None] | None = None


def _trial_hparams(trial: Trial) -> dict:
    """The trial's settings as flat scalars for the HParams dashboard."""
    model = {
        f"model.{k}": v
        for k, v in trial.model_kwargs.items()
        if isinstance(v, (int, float, str, bool))
    }
    return {**flat_hparams(trial.config), **model}


def train_group(
    trials: list[Trial],
    splits: Splits,
    group_dir: pathlib.Path,
    tensorboard_dir: pathlib.Path,
    options: SweepOptions = SweepOptions(),
) -> dict:
    """Trains one group's trials together (the epoch loop with a TrialGroup).

    Args:
      trials: the group's trials.
      splits: the sweep's data (see loop.train_members).
      group_dir: the folder the group checkpoints into; with
        `options.resume`, it continues from there.
      tensorboard_dir: the folder of each trial's TensorBoard run.
      options: its strategy, resume, progress and mesh are used.

    Returns:
      {"histories": [[epoch records] per trial], "best": [{"epoch", "step",
      key} per trial], "train_seconds", "strategy", "data_placement",
      "states": the final stacked state}.
    """
    mesh, resume = options.mesh or parallel.data_mesh(), options.resume
    parallel.check_batch_size(trials[0].config.batch_size, mesh, "training batch size")
    group = TrialGroup(trials, options.strategy, mesh)
    policy = CheckpointPolicy.of(group.config)
    with policy.open(group_dir) as ckpts:
        if ckpts.latest_step() is not None and not resume:
            raise ResumeError(f"{group_dir} already holds this group's checkpoints; pass --resume.")
        writers = [
            summaries.MetricWriter(tensorboard_dir / t.name, enabled=parallel.is_main_process())
            for t in trials
        ]
        try:
            resumed = resume and ckpts.latest_step() is not None
            run_options = RunOptions(resume=resumed, progress=options.progress, mesh=mesh)
            result = train_members(group, splits, ckpts, writers, run_options)
            for trial, writer, history, best in zip(
                trials, writers, result["histories"], result["bests"]
            ):
                writer.hparams(
                    _trial_hparams(trial),
                    {
                        f"hparam/best_{policy.metric}": best[policy.metric],
                        **{
                            f"hparam/final_{n}": v
                            for n, v in history[-1].items()
                            if n.startswith(("train_", "val_"))
                        },
                    },
                )
        finally:
            for writer in writers:
                writer.close()
    return {
        "histories": result["histories"],
        "best": result["bests"],
        "train_seconds": result["train_seconds"],
        "strategy": group.strategy,
        "data_placement": result["data_placement"],
        "states": result["state"],
    }


def restore_trial_best(
    trials: list[Trial], k: int, splits: Splits, group_dir: pathlib.Path, mesh: jax.sharding.Mesh
) -> TrainState:
    """Trial k's best state, from its group's checkpoint of best states.

    Args:
      trials: the group's trials.
      k: the trial's index in `trials`.
      splits: the sweep's splits (the training split's size and input shape).
      group_dir: the folder the group checkpointed into.
      mesh: the devices the state is replicated over.

    Returns:
      The trial's best state, with its own model (its dropout rates) and
      optimizer, as a run of its own.
    """
    first = trials[0].config
    model, _ = group_model(trials)
    steps_per_epoch = pipeline.num_batches(len(splits.train), first.batch_size)
    sample = jnp.zeros((1, *splits.train.images.shape[1:]), jnp.float32)
    target = parallel.replicate(init_trial_states(trials, model, steps_per_epoch, sample), mesh)
    with CheckpointPolicy.of(first).open(group_dir) as ckpts:
        best, _ = ckpts.restore_best(target)
    # As a run of its own: the trial's model (its dropout rates) and optimizer.
    trial = trials[k]
    state = take(best, k)
    tx = make_optimizer(trial.config, steps_per_epoch)
    return state.replace(apply_fn=get_model(first.model, **trial.model_kwargs).apply, tx=tx)


def save_best_run(best_dir: pathlib.Path, state: TrainState, meta: dict) -> None:
    """The best trial as an ordinary run's checkpoints (rundir.restore_best_state
    loads it). A resumed sweep keeps the same trial's; another trial's
    (groups a budget had skipped have since trained) are replaced: they are
    derived from the group checkpoints, which stay."""
    marker = best_dir / "trial.json"
    if checkpoints.has_checkpoints(best_dir):
        if marker.is_file() and json.loads(marker.read_text()) == {"trial": meta["trial"]}:
            return
        shutil.rmtree(best_dir / "checkpoints")
    step = int(state.step)
    with checkpoints.RunCheckpoints(best_dir, keep_latest=1) as ckpts:
        ckpts.save_best(step, state, meta)
        ckpts.save_latest(step, state, meta)
    if parallel.is_main_process():
        write_json(marker, {"trial": meta["trial"]})


def _run_groups(
    groups: list[list[Trial]],
    splits: Splits,
    workdir: pathlib.Path,
    options: SweepOptions,
) -> tuple[dict[int, dict], list[dict]]:
    """Trains (or, resumed, reuses) each group in order until the budget is
    spent; returns each trained trial's results and each group's status."""
    clock, budget_seconds = time.perf_counter(), options.budget_seconds
    results: dict[int, dict] = {}
    groups_info = []
    for g, group in enumerate(groups):
        group_dir = workdir / "groups" / f"group_{g:02d}"
        done_file = group_dir / "result.json"
        if options.resume and done_file.is_file():
            result = json.loads(done_file.read_text())
            print(f"group {g}: finished before, reused ({done_file})", flush=True)
        elif (
            budget_seconds is not None and results and time.perf_counter() - clock > budget_seconds
        ):
            print(f"group {g}: skipped, the budget of {budget_seconds:.0f} s is spent", flush=True)
            groups_info.append(
                {"group": g, "trials": [t.index for t in group], "status": "skipped (budget)"}
            )
            continue
        else:
            print(
                f"group {g}: trials {[t.index for t in group]}, {group[0].config.epochs} epochs, "
                f"batch {group[0].config.batch_size}, {group[0].config.optimizer}",
                flush=True,
            )
            result = train_group(group, splits, group_dir, workdir / "tensorboard", options)
            result.pop("states")
            if parallel.is_main_process():
                write_json(done_file, result)
            if options.on_group is not None:
                options.on_group(group, result)
        groups_info.append(
            {
                "group": g,
                "trials": [t.index for t in group],
                "status": "done",
                **{k: result[k] for k in ("train_seconds", "strategy", "data_placement")},
            }
        )
        for k, trial in enumerate(group):
            results[trial.index] = {
                "group": g,
                "history": result["histories"][k],
                "best": result["best"][k],
                "group_seconds": result["train_seconds"],
            }
    return results, groups_info


def run_sweep(
    sweep: SweepConfig,
    splits: Splits,
    workdir: pathlib.Path,
    options: SweepOptions = SweepOptions(),
) -> dict:
    """Runs the sweep's groups in order, picks the best trial by validation,
    saves it as a run in `workdir/best` and scores it on the test set.

    Args:
      sweep: the base config, the space searched and how (search_space.SweepConfig).
      splits: train, val (what picks the best trial) and test.
      workdir: the sweep's folder: groups/, best/, tensorboard/, sweep.json, trials.csv.
      options: how it runs (SweepOptions).

    Returns:
      The contents of sweep.json (trials, results, best trial, test scores)
      and "state", the best trial's scored state.
    """
    workdir = pathlib.Path(workdir).expanduser()
    mesh = options.mesh or parallel.data_mesh()
    options = dataclasses.replace(options, mesh=mesh)
    trials = make_trials(sweep)
    groups = group_trials(trials, options.max_group_size)
    spec = sweep.base.step_config()
    select_key, mode = spec.selection
    if not options.resume and (workdir / "groups").exists():
        raise ResumeError(
            f"{workdir} already holds a sweep. Pass --resume to continue it, or choose "
            "another --workdir; nothing was changed."
        )
    sizes = ", ".join(str(len(g)) for g in groups)
    together = f"trials in a group train together ({resolve_strategy(options.strategy, mesh)})"
    print(
        f"sweep: {len(trials)} trials in {len(groups)} group(s) of {sizes}; {together}", flush=True
    )
    clock = time.perf_counter()
    results, groups_info = _run_groups(groups, splits, workdir, options)
    sign = 1 if mode == "max" else -1
    best_index = max(results, key=lambda i: (sign * results[i]["best"][select_key], -i))
    best_trial = trials[best_index]
    state = _save_best_trial(best_trial, groups, results[best_index], splits, workdir, mesh)
    test = score_split(averaged(state), splits.test, best_trial.config.eval_batch_size, spec, mesh)
    summary = {
        "sweep": sweep.to_dict(),
        **_trials_summary(trials, results, groups_info, best_index, select_key),
        "test": test,
        "data": {
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "split_seed": sweep.base.data_seed,
        },
        "train_seconds": sum(gi.get("train_seconds", 0.0) for gi in groups_info),
        "wall_seconds": time.perf_counter() - clock,
        "devices": parallel.describe(mesh),
    }
    summary["rows"] = rows = trial_rows(trials, results, select_key)
    _write_sweep_files(workdir, summary, rows, spec)
    return {**summary, "state": state}


def _save_best_trial(
    trial: Trial, groups: list, result: dict, splits: Splits, workdir: pathlib.Path, mesh
) -> TrainState:
    """The best trial's best state, restored from its group and saved as an
    ordinary run in `workdir/best`."""
    group = groups[result["group"]]
    group_dir = workdir / "groups" / f"group_{result['group']:02d}"
    state = restore_trial_best(group, group.index(trial), splits, group_dir, mesh)
    meta = {
        "config": trial.config.to_dict(),
        "model_kwargs": dict(trial.model_kwargs),
        "trial": trial.index,
        "history": result["history"],
        "best": result["best"],
        "epoch_sums": {},
        "train_seconds": result["group_seconds"],
    }
    save_best_run(workdir / "best", state, meta)
    return state


def _trials_summary(
    trials: list[Trial], results: dict, groups_info: list, best_index: int, select_key: str
) -> dict:
    """sweep.json's trials (skipped ones too), groups and best trial."""
    best_trial = trials[best_index]
    return {
        "trials": [
            {
                "trial": t.index,
                "params": dict(t.params),
                "model_kwargs": dict(t.model_kwargs),
                "config": t.config.to_dict(),
                **results.get(t.index, {"status": "skipped (budget)"}),
            }
            for t in trials
        ],
        "groups": groups_info,
        "best_trial": best_index,
        "selected_by": select_key,
        "best": {
            "params": dict(best_trial.params),
            "model_kwargs": dict(best_trial.model_kwargs),
            "config": best_trial.config.to_dict(),
            **results[best_index]["best"],
        },
    }


def _write_sweep_files(
    workdir: pathlib.Path, summary: dict, rows: list[dict], spec: StepConfig
) -> None:
    """sweep.json, trials.csv, and best/'s summary and confusion matrix (process 0 only)."""
    if not parallel.is_main_process():
        return
    write_json(workdir / "sweep.json", summary)
    write_csv(workdir / "trials.csv", rows)
    rundir.write_summary(
        workdir / "best",
        {"experiment": "sweep best trial", **summary["best"], "test": summary["test"]},
    )
    if spec.classifies:
        viz.save_png(
            viz.confusion_matrix_image(
                np.array(summary["test"]["confusion_matrix"]),
                f"sweep: best trial {summary['best_trial']}, test",
            ),
            workdir / "best" / "confusion_matrix.png",
        )
