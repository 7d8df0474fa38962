"""A training run end to end: `train_and_evaluate(config, model, splits, workdir, options)`.

It trains with the epoch loop (mnist_jax.loop), scores the best checkpoint
on the test set, and leaves the run directory (mnist_jax.rundir) complete:
metrics.json, the figures (mnist_jax.figures), TensorBoard scalars, images,
projector embedding and hparams.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib

import flax.linen as nn

from mnist_jax import checkpoints, figures, parallel, rundir, summaries, timing
from mnist_jax.checkpoints import CheckpointPolicy
from mnist_jax.config import ResumeError, TrainConfig, flat_hparams
from mnist_jax.data import Splits
from mnist_jax.loop import fit
from mnist_jax.options import RunOptions
from mnist_jax.steps import averaged, score_split


def train_and_evaluate(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    workdir: str | pathlib.Path,
    options: RunOptions = RunOptions(),
) -> dict:
    """Trains, scores the best checkpoint on the test set, and writes the run directory.

    Without `options.resume`, a `workdir` that already holds checkpoints is
    refused, so nothing saved is overwritten. With it on a finished run, the
    best checkpoint is scored again; metrics.json keeps the run's timings.

    Args:
      config: the run's settings.
      model: the linen module to train (models.get_model).
      splits: train, val and test; `options.test_pictures` where the test
        split holds features rather than pictures.
      workdir: the run directory (mnist_jax.rundir).
      options: how to run and what to record (mnist_jax.options.RunOptions).

    Returns:
      The contents of metrics.json plus the final "state" and the
      "best_state" that was scored (its moving average, if any: steps.averaged).
    """
    workdir = pathlib.Path(workdir).expanduser()
    previous = _previous_summary(workdir, options.resume)
    mesh = options.mesh or parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "training batch size")  # Before any file.
    devices = parallel.describe(mesh)
    print(f"devices: {parallel.format_devices(devices)}; compute {config.dtype}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    phases = options.phases or timing.Phases()
    with contextlib.ExitStack() as stack:
        with phases("setup"):
            ckpts = stack.enter_context(CheckpointPolicy.of(config).open(workdir))
            writer = stack.enter_context(
                summaries.MetricWriter(workdir / "tensorboard", enabled=parallel.is_main_process())
            )
        result = fit(config, model, splits, ckpts, writer, dataclasses.replace(options, mesh=mesh))
        for name in ("init", "compile", "train"):
            phases.add(name, result[f"{name}_seconds"])
        with phases("test"):
            best_state = averaged(ckpts.restore_best(result["state"])[0])
            test = score_split(
                best_state,
                splits.test,
                config.eval_batch_size,
                config.step_config(),
                mesh,
                keep_predictions=True,
            )
        predictions = test.pop("predictions", None)
        with phases("figures"):
            _figures(
                config, splits, workdir, writer, options, result, best_state, test, predictions
            )
        with phases("finish"):
            _hparams(config, writer, result["best"], test)
            stack.close()  # Waits for the checkpoints, closes the TensorBoard file.
    summary = rundir.make_summary(
        experiment=options.experiment,
        config=config,
        model=model,
        params=result["state"].params,
        splits=splits,
        test=test,
        fit_result=result,
        devices=devices,
        extra=options.extra,
    )
    summary["phase_seconds"] = phases.seconds
    if previous is not None:  # Re-scored: the training was measured when it ran.
        summary.update({k: previous[k] for k in rundir.TIMINGS if k in previous}, rescored=True)
    rundir.write_summary(workdir, summary)
    return {**summary, "state": result["state"], "best_state": best_state}


def _previous_summary(workdir: pathlib.Path, resume: bool) -> dict | None:
    """A finished run's metrics.json, where it is resumed (to score again);
    ResumeError where `workdir` holds a run that is not to be resumed."""
    if not resume and checkpoints.has_checkpoints(workdir):
        raise ResumeError(
            f"{workdir} already holds a run's checkpoints. Pass --resume to continue it, "
            "or choose another --workdir; nothing was changed."
        )
    return rundir.read_summary(workdir) if resume and rundir.is_finished(workdir) else None


def _figures(config, splits, workdir, writer, options, result, best_state, test, predictions):
    """The run's figures, from process 0 only: the best state's test scores and predictions."""
    if parallel.is_main_process():
        figures.write_run_figures(
            workdir,
            writer,
            experiment=options.experiment,
            state=best_state,
            test=splits.test,
            spec=config.step_config(),
            history=result["history"],
            step=int(result["state"].step),
            scored_epoch=(result["best"] or {}).get("epoch"),
            predictions=predictions,
            confusion_matrix=test.get("confusion_matrix"),
            test_pictures=options.test_pictures,
        )


def _hparams(config: TrainConfig, writer: summaries.MetricWriter, best: dict, test: dict) -> None:
    """The run's settings and final scores for TensorBoard's HParams dashboard."""
    select_key = config.step_config().selection[0]
    writer.hparams(
        flat_hparams(config),
        {
            **{f"hparam/test_{k}": v for k, v in test.items() if isinstance(v, float)},
            f"hparam/best_{select_key}": best[select_key],
        },
    )
