"""Train a sweep's trials together, keep the best, and report every trial.

The trials of a group (mnist_jax.search_space.group_trials) have their train
states stacked along a leading trial axis (K, ...): parameters, optimizer
state (with each trial's learning rate and weight decay), key and step.
One jitted step advances all K on K batches (each trial shuffles by its own
seed), so a group compiles once. How the K trials run inside that step:

- "vmap": jax.vmap over the trial axis, one batched program; for GPU/TPU.
- "unroll": K copies of the single-trial step in one program. On XLA:CPU
  vmap turns each convolution into a grouped one, which runs slowly there.
  Measured (simple CNN, K=8, `python -m experiments.benchmark --sweep
  --steps 60`, 2 CPU cores): 208 examples/s vmapped, 806 unrolled, 619 for
  the same trials one after another.
- "auto": "unroll" on CPU, "vmap" elsewhere.

Per-trial dropout rates enter the step as arrays: each trial's model is the
group's model cloned with its traced rates (models.layers.Dropout).

Each trial is one TensorBoard run (`tensorboard/trial_XX`) with its epoch
scalars and its hyperparameters and final metrics for the HParams dashboard.
A group checkpoints its stacked state at the end of every epoch (and its
trials' best states apart), so an interrupted sweep resumes from there;
finished groups are not trained again. The best trial by validation accuracy
(lowest validation loss for autoencoders), never by test, is saved as an
ordinary run in `best/` and scored on the test set.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import pathlib
import shutil
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mnist_jax import checkpoints, parallel, pipeline, summaries, viz
from mnist_jax.data import Splits
from mnist_jax.models import get_model
from mnist_jax.search_space import MODEL_PREFIX, SweepConfig, Trial, batched_fields, group_trials, make_trials
from mnist_jax.tasks import StepConfig
from mnist_jax.train import (ResumeError, TrainState, create_train_state, evaluate, flat_hparams,
                             _is_better, make_optimizer, metric_means, resolve_data_placement, run_keys, score_split,
                             set_hyperparams, train_step, write_atomically, write_json)

STRATEGIES = ("auto", "vmap", "unroll")


def stack(trees: list) -> Any:
    """K pytrees of one structure -> one with a leading (K,) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: Any, k: int) -> Any:
    """Trial k of a stacked pytree."""
    return jax.tree.map(lambda x: x[k], tree)


def trial_count(tree: Any) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


def resolve_strategy(strategy: str, mesh: jax.sharding.Mesh) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown trial parallelism {strategy!r}; choose one of {STRATEGIES}")
    if strategy != "auto":
        return strategy
    return "unroll" if mesh.devices.flat[0].platform == "cpu" else "vmap"


def swept_model_fields(trials: list[Trial]) -> tuple[str, ...]:
    """The model fields (dropout rates) the group's trials set per trial."""
    _, batched = batched_fields(trials[0])
    swept = {n.removeprefix(MODEL_PREFIX) for n in trials[0].params if n.startswith(MODEL_PREFIX)}
    return tuple(sorted(batched & swept))


def group_model(trials: list[Trial]) -> tuple[nn.Module, tuple[str, ...]]:
    """The group's shared model (the settings its trials share) and the
    model fields each trial sets itself, as arrays (swept_model_fields)."""
    fields = swept_model_fields(trials)
    shared = {k: v for k, v in trials[0].model_kwargs.items() if k not in fields}
    return get_model(trials[0].config.model, **shared), fields


def init_trial_states(trials: list[Trial], model: nn.Module, steps_per_epoch: int,
                      sample: jax.Array) -> TrainState:
    """The group's stacked initial state: each trial's init from its own seed,
    its learning rate and weight decay in its optimizer state."""
    tx = make_optimizer(trials[0].config, steps_per_epoch)  # One structure for all.
    config_fields, _ = batched_fields(trials[0])
    states = []
    for trial in trials:
        state = create_train_state(model, tx, trial.config.seed, sample)
        values = {k: getattr(trial.config, k) for k in ("learning_rate", "weight_decay") if k in config_fields}
        states.append(state.replace(opt_state=set_hyperparams(state.opt_state, **values)))
    return stack(states)


def trials_step(states: TrainState, model_hparams: dict, batches: dict, *, model: nn.Module,
                spec: StepConfig, strategy: str) -> tuple[TrainState, dict]:
    """One train step of K trials: `train_step` for each, on its own batch.

    states: stacked (K, ...); model_hparams: {field: (K,)} per-trial model
    fields (dropout rates); batches: image (K, B, 28, 28, 1), label (K, B),
    mask (K, B). Returns the stacked new states and metric sums (K,).
    """
    def one_trial(state, hparams, batch):
        trial_model = model.clone(**hparams) if hparams else model
        new, metrics = train_step(state.replace(apply_fn=trial_model.apply), batch, spec=spec)
        return new.replace(apply_fn=state.apply_fn), metrics

    if strategy == "vmap":
        return jax.vmap(one_trial)(states, model_hparams, batches)
    outputs = [one_trial(take(states, k), take(model_hparams, k), take(batches, k))
               for k in range(trial_count(states))]
    return stack(outputs)


def make_trials_step(model: nn.Module, spec: StepConfig, strategy: str, mesh: jax.sharding.Mesh) -> Callable:
    """`trials_step` jitted: states replicated and donated, each trial's batch split across the mesh."""
    replicated = parallel.replicated(mesh)
    return jax.jit(functools.partial(trials_step, model=model, spec=spec, strategy=strategy),
                   donate_argnums=0, in_shardings=(replicated, replicated, parallel.steps_sharded(mesh)),
                   out_shardings=(replicated, replicated))


def make_trials_scan(model: nn.Module, spec: StepConfig, strategy: str, mesh: jax.sharding.Mesh) -> Callable:
    """An epoch of `trials_step` as one lax.scan, the training set on the devices."""
    replicated = parallel.replicated(mesh)
    batch_sharding = parallel.steps_sharded(mesh)  # (K, B, ...)

    def epoch(states, model_hparams, data, indices, masks):  # indices, masks: (steps, K, B)
        def one_step(states, step_input):
            idx, mask = step_input
            batches = {"image": data["image"][idx], "label": data["label"][idx], "mask": mask}
            batches = jax.lax.with_sharding_constraint(batches, batch_sharding)
            return trials_step(states, model_hparams, batches, model=model, spec=spec, strategy=strategy)
        return jax.lax.scan(one_step, states, (indices, masks))

    steps_sharding = parallel.steps_sharded(mesh, leading=2)  # (steps, K, B)
    return jax.jit(epoch, donate_argnums=0,
                   in_shardings=(replicated, replicated, replicated, steps_sharding, steps_sharding),
                   out_shardings=(replicated, replicated))


def _keep_improved(best: TrainState | None, states: TrainState, improved: np.ndarray) -> TrainState:
    """Each trial's best state: the new one where it improved, else the kept one (fresh buffers)."""
    if best is None:
        return jax.tree.map(jnp.copy, states)
    mask = jnp.asarray(improved)
    return jax.tree.map(lambda b, s: jnp.where(mask.reshape(-1, *([1] * (s.ndim - 1))), s, b), best, states)


def _trial_hparams(trial: Trial) -> dict:
    """The trial's settings as flat scalars for the HParams dashboard."""
    model = {f"model.{k}": v for k, v in trial.model_kwargs.items() if isinstance(v, (int, float, str, bool))}
    return {**flat_hparams(trial.config), **model}


def epoch_batches(trials: list[Trial], epoch: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, masks), each (steps, K, B): every trial's batches of
    `epoch` in its own shuffled order (the order an ordinary run of its seed takes)."""
    batch_size = trials[0].config.batch_size
    orders = [pipeline.batch_indices(pipeline.epoch_order(run_keys(t.config.seed)[2], epoch, num_examples),
                                     batch_size) for t in trials]
    return np.stack([o[0] for o in orders], 1), np.stack([o[1] for o in orders], 1)


def train_group(trials: list[Trial], splits: Splits, group_dir: pathlib.Path, tensorboard_dir: pathlib.Path, *,
                strategy: str = "auto", mesh: jax.sharding.Mesh | None = None, resume: bool = False,
                progress: bool = True) -> dict:
    """Trains one group's trials together; returns their histories and bests.

    Checkpoints the stacked state after every epoch into `group_dir`; with
    `resume`, continues from there. Writes each trial's TensorBoard run.

    Returns {"histories": [[epoch records] per trial], "best": [{"epoch",
    "step", key} per trial], "train_seconds", "strategy", "data_placement",
    "states": the final stacked state}.
    """
    first = trials[0].config
    spec = first.step_config()
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(first.batch_size, mesh, "training batch size")
    strategy = resolve_strategy(strategy, mesh)
    train = splits.train
    steps_per_epoch = pipeline.num_batches(len(train), first.batch_size)
    select_key, select_mode = spec.selection
    model, fields = group_model(trials)
    sample = jnp.zeros((1, *train.images.shape[1:]), jnp.float32)
    states = parallel.replicate(init_trial_states(trials, model, steps_per_epoch, sample), mesh)
    model_hparams = parallel.replicate(
        {f: jnp.asarray([t.model_kwargs[f] for t in trials], jnp.float32) for f in fields}, mesh)
    trial_configs = [t.config.to_dict() for t in trials]
    meta = {"histories": [[] for _ in trials], "best": [None] * len(trials), "train_seconds": 0.0}
    best_states = None

    with checkpoints.RunCheckpoints(group_dir, max_to_keep=1) as ckpts:
        if ckpts.latest_step() is not None:
            if not resume:
                raise ResumeError(f"{group_dir} already holds this group's checkpoints; pass --resume.")
            states, saved = ckpts.restore_latest(states)
            if saved["trials"] != json.loads(json.dumps(trial_configs)):
                raise ResumeError(f"cannot resume {group_dir}: its trials were trained with other settings. "
                                  "Resume with the same sweep, or start a new one in another --workdir.")
            meta.update({k: saved[k] for k in meta})
            best_states, _ = ckpts.restore_best(states)

        placement = resolve_data_placement(first, train, mesh)
        if placement == "device":
            data = parallel.replicate({"image": train.images, "label": train.labels}, mesh)
            epoch_fn = make_trials_scan(model, spec, strategy, mesh)
        else:
            step_fn = make_trials_step(model, spec, strategy, mesh)

        def train_epoch(states, epoch):
            """The epoch's steps; returns the new states and metric sums (K,)."""
            indices, masks = epoch_batches(trials, epoch, len(train))
            if placement == "device":
                states, metrics = epoch_fn(states, model_hparams, data,
                                           *parallel.shard_steps((indices, masks), mesh, leading=2))
                return states, {k: np.asarray(v).sum(0) for k, v in jax.device_get(metrics).items()}
            pending = []
            for step in tqdm(range(steps_per_epoch), disable=not progress, leave=False,
                             desc=f"epoch {epoch + 1}/{first.epochs}", unit="step"):
                batches = {"image": train.images[indices[step]], "label": train.labels[indices[step]],
                           "mask": masks[step]}  # (K, B, ...)
                states, metrics = step_fn(states, model_hparams, parallel.shard_steps(batches, mesh))
                pending.append(metrics)
            fetched = jax.device_get(pending)
            return states, {k: np.sum([m[k] for m in fetched], 0) for k in fetched[0]}

        writers = [summaries.MetricWriter(tensorboard_dir / t.name, enabled=parallel.is_main_process())
                   for t in trials]
        clock = time.perf_counter()
        elapsed_before = meta["train_seconds"]
        for epoch in range(len(meta["histories"][0]), first.epochs):
            states, sums = train_epoch(states, epoch)
            step = (epoch + 1) * steps_per_epoch
            improved = np.zeros(len(trials), bool)
            for k, writer in enumerate(writers):
                val = evaluate(take(states, k), splits.val, first.eval_batch_size, spec, mesh)
                val.pop("predictions", None)
                train_means = metric_means({n: v[k] for n, v in sums.items()})
                record = {"epoch": epoch + 1, "step": step, **{f"train_{n}": v for n, v in train_means.items()},
                          **{f"val_{n}": v for n, v in val.items()}}
                meta["histories"][k].append(record)
                writer.scalars(step, {n.replace("_", "/", 1): v for n, v in record.items()
                                      if n.startswith(("train_", "val_"))})
                if _is_better(record[select_key], meta["best"][k], select_key, select_mode):
                    meta["best"][k] = {"epoch": epoch + 1, "step": step, select_key: record[select_key]}
                    improved[k] = True
            shown = "  ".join(f"{t.index}:{h[-1][select_key]:.4f}" for t, h in zip(trials, meta["histories"]))
            print(f"epoch {epoch + 1:>3}/{first.epochs}  {select_key.replace('_', ' ')} by trial  {shown}",
                  flush=True)
            best_states = _keep_improved(best_states, states, improved)
            snapshot = {**meta, "trials": trial_configs,
                        "train_seconds": elapsed_before + time.perf_counter() - clock}
            if improved.any():
                ckpts.save_best(step, best_states, snapshot)
            ckpts.save_latest(step, states, snapshot)
        ckpts.wait()
        meta["train_seconds"] = elapsed_before + time.perf_counter() - clock
        for k, (trial, writer) in enumerate(zip(trials, writers)):
            final = meta["histories"][k][-1]
            writer.hparams(_trial_hparams(trial), {
                f"hparam/best_{select_key}": meta["best"][k][select_key],
                **{f"hparam/final_{n}": v for n, v in final.items() if n.startswith(("train_", "val_"))},
            })
            writer.close()
    return {**meta, "strategy": strategy, "data_placement": placement, "states": states}


def restore_trial_best(trials: list[Trial], k: int, splits: Splits, group_dir: pathlib.Path,
                       mesh: jax.sharding.Mesh) -> TrainState:
    """Trial k's best state, from its group's checkpoint of best states."""
    first = trials[0].config
    model, _ = group_model(trials)
    steps_per_epoch = pipeline.num_batches(len(splits.train), first.batch_size)
    sample = jnp.zeros((1, *splits.train.images.shape[1:]), jnp.float32)
    target = parallel.replicate(init_trial_states(trials, model, steps_per_epoch, sample), mesh)
    with checkpoints.RunCheckpoints(group_dir, max_to_keep=1) as ckpts:
        best, _ = ckpts.restore_best(target)
    # As a run of its own: the trial's model (its dropout rates) and optimizer.
    trial = trials[k]
    state = take(best, k)
    tx = make_optimizer(trial.config, steps_per_epoch)
    return state.replace(apply_fn=get_model(first.model, **trial.model_kwargs).apply, tx=tx)


def save_best_run(best_dir: pathlib.Path, state: TrainState, meta: dict) -> None:
    """The best trial as an ordinary run's checkpoints (restore_best_state
    loads it). A resumed sweep keeps the same trial's; another trial's
    (groups a budget had skipped have since trained) are replaced: they are
    derived from the group checkpoints, which stay."""
    marker = best_dir / "trial.json"
    if checkpoints.has_checkpoints(best_dir):
        if marker.is_file() and json.loads(marker.read_text()) == {"trial": meta["trial"]}:
            return
        shutil.rmtree(best_dir / "checkpoints")
    step = int(state.step)
    with checkpoints.RunCheckpoints(best_dir, max_to_keep=1) as ckpts:
        ckpts.save_best(step, state, meta)
        ckpts.save_latest(step, state, meta)
    if parallel.is_main_process():
        write_json(marker, {"trial": meta["trial"]})


def trial_rows(trials: list[Trial], results: dict[int, dict], select_key: str) -> list[dict]:
    """One row per trial: its swept values, then its best-epoch validation scores."""
    rows = []
    for trial in trials:
        result = results.get(trial.index)
        row = {"trial": trial.index, "group": result["group"] if result else None, **trial.params}
        if result is None:
            rows.append({**row, "status": "skipped (budget)"})
            continue
        best = result["best"]
        at_best = result["history"][best["epoch"] - 1]
        row.update({"best_epoch": best["epoch"], f"best_{select_key}": best[select_key],
                    **{k: v for k, v in at_best.items() if k.startswith(("val_", "train_"))},
                    "group_seconds": result["group_seconds"], "status": "done"})
        rows.append(row)
    return rows


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    """The rows as CSV (columns: the union of their keys, in first-seen order), atomically."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda f: f.write(buffer.getvalue()))


def format_table(rows: list[dict], param_names: list[str], select_key: str, best_index: int) -> str:
    """The trials as a Markdown table, best first by `select_key`, the chosen one marked."""
    key = f"best_{select_key}"
    done = sorted((r for r in rows if r["status"] == "done"), key=lambda r: r[key],
                  reverse=select_key != "val_loss")
    header = ["trial", *param_names, "best epoch", select_key.replace("_", " "), "val loss", "train loss"]

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in done:
        mark = " (best)" if r["trial"] == best_index else ""
        lines.append("| " + " | ".join([f"{r['trial']}{mark}", *(cell(r[p]) for p in param_names),
                                        str(r["best_epoch"]), f"{r[key]:.4f}", f"{r['val_loss']:.4f}",
                                        f"{r.get('train_loss', float('nan')):.4f}"]) + " |")
    for r in rows:
        if r["status"] != "done":
            lines.append("| " + " | ".join([str(r["trial"]), *(cell(r[p]) for p in param_names),
                                            r["status"], "", "", ""]) + " |")
    return "\n".join(lines)


def run_sweep(sweep: SweepConfig, splits: Splits, workdir: pathlib.Path, *, strategy: str = "auto",
              max_group_size: int | None = None, budget_seconds: float | None = None, resume: bool = False,
              progress: bool = True, mesh: jax.sharding.Mesh | None = None,
              on_group: Callable[[list[Trial], dict], None] | None = None) -> dict:
    """Runs the sweep's groups in order, picks the best trial by validation,
    saves it as a run in `workdir/best` and scores it on the test set.

    budget_seconds: no group but the first starts once this much time has
    passed (the trials of groups not run are listed as skipped).
    on_group: called with each finished group's trials and result (W&B).

    Returns the contents of sweep.json (trials, results, best trial, test scores).
    """
    workdir = pathlib.Path(workdir).expanduser()
    mesh = mesh or parallel.data_mesh()
    trials = make_trials(sweep)
    groups = group_trials(trials, max_group_size)
    spec = sweep.base.step_config()
    select_key, _ = spec.selection
    if not resume and (workdir / "groups").exists():
        raise ResumeError(f"{workdir} already holds a sweep. Pass --resume to continue it, or choose "
                          "another --workdir; nothing was changed.")
    is_main = parallel.is_main_process()
    print(f"sweep: {len(trials)} trials in {len(groups)} group(s) of "
          f"{', '.join(str(len(g)) for g in groups)}; trials in a group train together "
          f"({resolve_strategy(strategy, mesh)})", flush=True)
    clock = time.perf_counter()
    results: dict[int, dict] = {}
    groups_info = []
    for g, group in enumerate(groups):
        group_dir = workdir / "groups" / f"group_{g:02d}"
        done_file = group_dir / "result.json"
        if resume and done_file.is_file():
            result = json.loads(done_file.read_text())
            print(f"group {g}: finished before, reused ({done_file})", flush=True)
        elif budget_seconds is not None and results and time.perf_counter() - clock > budget_seconds:
            print(f"group {g}: skipped, the budget of {budget_seconds:.0f} s is spent", flush=True)
            groups_info.append({"group": g, "trials": [t.index for t in group], "status": "skipped (budget)"})
            continue
        else:
            print(f"group {g}: trials {[t.index for t in group]}, {group[0].config.epochs} epochs, "
                  f"batch {group[0].config.batch_size}, {group[0].config.optimizer}", flush=True)
            result = train_group(group, splits, group_dir, workdir / "tensorboard", strategy=strategy,
                                 mesh=mesh, resume=resume, progress=progress)
            result.pop("states")
            if is_main:
                write_json(done_file, result)
            if on_group is not None:
                on_group(group, result)
        groups_info.append({"group": g, "trials": [t.index for t in group], "status": "done",
                            **{k: result[k] for k in ("train_seconds", "strategy", "data_placement")}})
        for k, trial in enumerate(group):
            results[trial.index] = {"group": g, "history": result["histories"][k], "best": result["best"][k],
                                    "group_seconds": result["train_seconds"]}
    sign = 1 if spec.selection[1] == "max" else -1
    best_index = max(results, key=lambda i: (sign * results[i]["best"][select_key], -i))
    best_trial = trials[best_index]
    g = results[best_index]["group"]
    group = groups[g]
    state = restore_trial_best(group, group.index(best_trial), splits, workdir / "groups" / f"group_{g:02d}", mesh)
    test = score_split(state, splits.test, best_trial.config.eval_batch_size, spec, mesh)
    best_dir = workdir / "best"
    best_meta = {"config": best_trial.config.to_dict(), "model_kwargs": dict(best_trial.model_kwargs),
                 "trial": best_index, "history": results[best_index]["history"], "best": results[best_index]["best"],
                 "epoch_sums": {}, "train_seconds": results[best_index]["group_seconds"]}
    save_best_run(best_dir, state, best_meta)
    rows = trial_rows(trials, results, select_key)
    summary = {
        "sweep": sweep.to_dict(),
        "trials": [{"trial": t.index, "params": dict(t.params), "model_kwargs": dict(t.model_kwargs),
                    "config": t.config.to_dict(), **results.get(t.index, {"status": "skipped (budget)"})}
                   for t in trials],
        "groups": groups_info,
        "best_trial": best_index,
        "selected_by": select_key,
        "best": {"params": dict(best_trial.params), "model_kwargs": dict(best_trial.model_kwargs),
                 "config": best_trial.config.to_dict(), **results[best_index]["best"]},
        "test": test,
        "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                 "split_seed": sweep.base.data_seed},
        "train_seconds": sum(gi.get("train_seconds", 0.0) for gi in groups_info),
        "wall_seconds": time.perf_counter() - clock,
        "devices": parallel.describe(mesh),
    }
    if is_main:
        write_json(workdir / "sweep.json", summary)
        write_csv(workdir / "trials.csv", rows)
        write_json(best_dir / "metrics.json", {"experiment": "sweep best trial", **summary["best"], "test": test})
        if spec.classifies:
            viz.save_png(viz.confusion_matrix_image(np.array(test["confusion_matrix"]),
                                                    f"sweep: best trial {best_index}, test"),
                         best_dir / "confusion_matrix.png")
    return {**summary, "rows": rows, "state": state}
