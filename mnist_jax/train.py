"""A training run end to end: `train_and_evaluate(config, model, splits, workdir)`.

It trains with the epoch loop (mnist_jax.loop), scores the best checkpoint
on the test set, and leaves the run directory (mnist_jax.rundir) complete:
metrics.json, the figures (mnist_jax.figures), TensorBoard scalars, images,
projector embedding and hparams.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from mnist_jax import checkpoints, figures, parallel, rundir, summaries, timing
from mnist_jax.checkpoints import CheckpointPolicy
from mnist_jax.config import ResumeError, TrainConfig, flat_hparams
from mnist_jax.data import Splits
from mnist_jax.loop import fit
from mnist_jax.steps import averaged, score_split


def train_and_evaluate(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    workdir: str | pathlib.Path,
    *,
    experiment: str,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    extra: dict | None = None,
    pretrained: dict | None = None,
    mesh: jax.sharding.Mesh | None = None,
    test_pictures: np.ndarray | None = None,
    phases: timing.Phases | None = None,
) -> dict:
    """Trains, scores the best checkpoint on the test set, and writes the run directory.

    Without `resume`, a `workdir` that already holds checkpoints is refused,
    so nothing saved is overwritten. With `resume` on a finished run, the
    best checkpoint is scored again; metrics.json keeps the run's timings. `extra`: fields added to metrics.json.
    `mesh`: the devices (default: all). `test_pictures`: the test images as
    uint8 pictures, where `splits.test` holds something else (cached
    features), for the figures. `phases`: where the caller's time went so
    far (loading the data); this run's phases are added and written to
    metrics.json's "phase_seconds".

    Returns the contents of metrics.json plus the final "state" and the
    "best_state" that was scored (its moving average, if any: steps.averaged).
    """
    workdir = pathlib.Path(workdir).expanduser()
    if not resume and checkpoints.has_checkpoints(workdir):
        raise ResumeError(
            f"{workdir} already holds a run's checkpoints. Pass --resume to continue it, "
            "or choose another --workdir; nothing was changed."
        )
    previous = rundir.read_summary(workdir) if resume and rundir.is_finished(workdir) else None
    spec = config.step_config()
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "training batch size")  # Before any file.
    devices = parallel.describe(mesh)
    is_main = parallel.is_main_process()
    print(f"devices: {parallel.format_devices(devices)}; compute {config.dtype}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    phases = phases or timing.Phases()
    with contextlib.ExitStack() as stack:
        with phases("setup"):
            ckpts = stack.enter_context(CheckpointPolicy.of(config).open(workdir))
            writer = stack.enter_context(
                summaries.MetricWriter(workdir / "tensorboard", enabled=is_main)
            )
        result = fit(
            config,
            model,
            splits,
            ckpts,
            writer,
            resume=resume,
            on_step=on_step,
            progress=progress,
            pretrained=pretrained,
            mesh=mesh,
        )
        for name in ("init", "compile", "train"):
            phases.add(name, result[f"{name}_seconds"])
        state = result["state"]
        with phases("test"):
            best_state = averaged(ckpts.restore_best(state)[0])
            test = score_split(
                best_state, splits.test, config.eval_batch_size, spec, mesh, keep_predictions=True
            )
        predictions = test.pop("predictions", None)
        with phases("figures"):
            if is_main:
                figures.write_run_figures(
                    workdir,
                    writer,
                    experiment=experiment,
                    state=best_state,
                    test=splits.test,
                    spec=spec,
                    history=result["history"],
                    step=int(state.step),
                    scored_epoch=(result["best"] or {}).get("epoch"),
                    predictions=predictions,
                    confusion_matrix=test.get("confusion_matrix"),
                    test_pictures=test_pictures,
                )
        with phases("finish"):
            select_key = spec.selection[0]
            writer.hparams(
                flat_hparams(config),
                {
                    **{f"hparam/test_{k}": v for k, v in test.items() if isinstance(v, float)},
                    f"hparam/best_{select_key}": result["best"][select_key],
                },
            )
            stack.close()  # Waits for the checkpoints, closes the TensorBoard file.
    summary = rundir.make_summary(
        experiment=experiment,
        config=config,
        model=model,
        params=state.params,
        splits=splits,
        test=test,
        fit_result=result,
        devices=devices,
        extra=extra,
    )
    summary["phase_seconds"] = phases.seconds
    if previous is not None:  # Re-scored: the training was measured when it ran.
        summary.update({k: previous[k] for k in rundir.TIMINGS if k in previous}, rescored=True)
    rundir.write_summary(workdir, summary)
    return {**summary, "state": state, "best_state": best_state}
