"""Optional Weights & Biases logging of a sweep (report 000 used W&B).

wandb is imported only here, and only when asked for (`--wandb`): it is not
a dependency of the library (`pip install wandb`, or the `wandb` extra).
WANDB_MODE=offline logs to local files that `wandb sync` uploads later.
"""

from __future__ import annotations

import pathlib


def log_sweep(summary: dict, project: str, directory: pathlib.Path, sweep_name: str) -> None:
    """One W&B run per trial: its hyperparameters, per-epoch metrics, and its
    best-epoch scores in the summary; the best trial's run also carries the
    test scores and confusion matrix.

    Ends with `wandb.teardown()`: `run.finish()` returns before W&B's service
    has written the last records of an offline run, so without it a `wandb
    sync` straight after (in the same notebook, say) could read a cut-off log.
    """
    try:
        import wandb
    except ImportError as e:
        raise SystemExit(
            "--wandb: the wandb package is not installed; "
            "pip install 'mnist-jax[wandb]' (or pip install wandb), or drop --wandb"
        ) from e
    directory.mkdir(parents=True, exist_ok=True)
    for trial in summary["trials"]:
        if "history" not in trial:
            continue  # Skipped: the budget ran out before its group.
        run = wandb.init(
            project=project,
            group=sweep_name,
            name=f"trial_{trial['trial']:02d}",
            config={**trial["params"], **trial["config"], "model_kwargs": trial["model_kwargs"]},
            dir=str(directory),
            reinit="create_new",
        )
        for record in trial["history"]:
            run.log({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
        run.summary.update({f"best_{k}": v for k, v in trial["best"].items()})
        if trial["trial"] == summary["best_trial"]:
            test = summary["test"]
            run.summary.update({f"test_{k}": v for k, v in test.items() if isinstance(v, float)})
            if "confusion_matrix" in test:
                run.log(
                    {
                        "test_confusion_matrix": wandb.Table(
                            columns=[str(c) for c in range(len(test["confusion_matrix"]))],
                            data=test["confusion_matrix"],
                        )
                    }
                )
        run.finish()
    wandb.teardown()  # Waits until every run's files are written.
