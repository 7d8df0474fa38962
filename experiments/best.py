"""The best single model we train on a CPU, beyond the reports, and an ensemble of its seeds.

    python -m experiments.best               # seeds 0, 1, 2: each seed's test accuracy, their mean
    python -m experiments.best --ensemble 3  # and the softmax average of seeds 0-2's models
    python -m experiments.best --quick       # 2 seeds of 2 short epochs: a smoke test

The recipe: the strided CNN (mnist_jax.models.StridedCNN, after Chris
Deotte's Kaggle CNN), random rotation, shift and zoom of every training
image on the device (mnist_jax.augment), Adam with a one-cycle learning
rate (warm-up to 2e-3 over the first quarter of 40 epochs, then cosine to
0), label smoothing 0.1, and the exponential moving average of the
weights. Each seed selects its checkpoint on its own validation split (10 %
of the training images); the test set is scored once, at the end. Seed k
trains in <workdir>/seed<k>: a finished seed is read back, an interrupted
one resumed, so the command can be run again after any stop. The other
experiments' recipe flags (--epochs, --lr, --schedule, --rotation,
--label-smoothing, ...) try another recipe; give it its own --workdir.

Expected: about 99.65 % test accuracy per seed and a little more for the
ensemble, each seed about half an hour on 2 CPU cores with oneDNN's
convolutions (the onednn extra), twice that without; the recorded runs
(commands, machine, times) are in docs/results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics

import numpy as np

from mnist_jax import (
    checkpoints,
    parallel,
    predict,
    rundir,
    timing,
)
from mnist_jax import (
    data as data_lib,
)
from mnist_jax import (
    metrics as metrics_lib,
)
from mnist_jax.augment import AugmentConfig
from mnist_jax.cli import load_mnist_or_exit, start, training_errors
from mnist_jax.config import TrainConfig, check_resumable
from mnist_jax.files import write_json
from mnist_jax.flags import (
    DEFAULT_RUNS_DIR,
    ShowDefaults,
    add_data_flags,
    add_recipe_flags,
    check_at_least_one,
    config_from_args,
)
from mnist_jax.models import get_model
from mnist_jax.options import RunOptions
from mnist_jax.reference import Reference
from mnist_jax.train import train_and_evaluate

CONFIG = TrainConfig(
    model="strided_cnn",
    epochs=40,
    batch_size=64,
    learning_rate=2e-3,
    weight_decay=0.0,
    schedule="onecycle",
    augment=AugmentConfig(rotation=10.0, shift=0.1, zoom=0.1),
    ema_decay=0.999,
    label_smoothing=0.1,
)
QUICK = dataclasses.replace(
    CONFIG, epochs=2, train_size=5000, test_size=1000, log_every_steps=10, checkpoint_every_steps=40
)
SEEDS, QUICK_SEEDS = 3, 2

# The report's best classifier: what this experiment goes beyond.
REFERENCE = Reference(
    source="004 Lab 2, PyTorch: the 3-conv CNN",
    accuracy=0.9938,
    f1_macro=0.9938,
    train_seconds=88.29,
)
# Published MNIST test accuracies: (who, what, accuracy).
ANCHORS = (
    ("Deotte, Kaggle (github cdeotte/MNIST-CNN-99.75)", "one CNN, mean", 0.9965),
    ("Deotte, Kaggle", "ensemble of 15 CNNs", 0.9975),
    ("Byerly et al. 2020 (arXiv 2001.09136)", "one model", 0.9983),
    ("An et al. 2020 (arXiv 2008.10400)", "ensemble, epoch chosen on test", 0.9991),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.best",
        description=__doc__.split("\n")[0],
        formatter_class=ShowDefaults,
    )
    add = parser.add_argument
    add(
        "--seeds",
        type=int,
        help=f"train seeds 0..N-1 (default {SEEDS}; {QUICK_SEEDS} with --quick)",
    )
    add(
        "--ensemble",
        type=int,
        default=0,
        metavar="K",
        help="also score the average of seeds 0..K-1's softmax outputs, training any missing "
        "(0: none)",
    )
    add_recipe_flags(parser, CONFIG)
    add(
        "--workdir",
        type=pathlib.Path,
        default=DEFAULT_RUNS_DIR / "best",
        help="where seed k trains, in seed<k>; best.json, the seeds' table, goes here too",
    )
    add(
        "--quick",
        action="store_true",
        help=f"a smoke test: {QUICK.epochs} epochs on {QUICK.train_size:,} training images, "
        f"scored on {QUICK.test_size:,} test images",
    )
    add_data_flags(parser)
    add("--no-progress", action="store_true", help="no progress bar")
    add("--debug", action="store_true", help="the libraries' logs and full tracebacks")
    return parser


def train_seed(
    config: TrainConfig, mnist: data_lib.MNIST, workdir: pathlib.Path, progress: bool
) -> dict:
    """Seed `config.seed`'s run in `workdir`: read back if finished, else
    trained (resumed from its checkpoints where it has some). Its summary."""
    if rundir.is_finished(workdir):
        summary = rundir.read_summary(workdir)
        check_resumable(summary["config"], config)  # A run of other settings is not this seed's.
        print(f"seed {config.seed}: finished earlier, in {workdir}", flush=True)
        return summary
    splits = data_lib.make_splits(
        mnist,
        val_fraction=config.val_fraction,
        seed=config.data_seed,
        train_size=config.train_size,
        test_size=config.test_size,
    )
    print(
        f"\n=== seed {config.seed}: train {len(splits.train)}, val {len(splits.val)}, "
        f"test {len(splits.test)}; run dir {workdir}",
        flush=True,
    )
    options = RunOptions(
        experiment="best",
        resume=checkpoints.has_checkpoints(workdir),
        progress=progress,
        phases=timing.Phases(),
        extra={"data_source": mnist.source, "reference": dataclasses.asdict(REFERENCE)},
    )
    summary = train_and_evaluate(config, get_model(config.model), splits, workdir, options)
    return {k: v for k, v in summary.items() if k not in ("state", "best_state")}


def score_ensemble(run_dirs: list[pathlib.Path], test: data_lib.Split) -> dict:
    """Test accuracy and macro F1 of the mean softmax of the runs' best
    checkpoints (each as it was scored: its moving average)."""
    probabilities = np.mean(
        [predict.Classifier(rundir.load_run(d)).probabilities(test.images) for d in run_dirs],
        axis=0,
    )
    predictions = np.argmax(probabilities, axis=-1)  # (N,)
    report = metrics_lib.classification_report(
        metrics_lib.confusion_matrix(test.labels, predictions)
    )
    return {
        "test_accuracy": float(np.mean(predictions == test.labels)),
        "f1_macro": report["f1_macro"],
        "test_images": len(test),
    }


def seed_row(summary: dict) -> dict:
    return {
        "seed": summary["config"]["seed"],
        "test_accuracy": summary["test"]["accuracy"],
        "f1_macro": summary["test"]["f1_macro"],
        "train_seconds": summary["train_seconds"],
        "best_epoch": summary["evaluated_checkpoint"]["epoch"],
        "epochs": summary["config"]["epochs"],
        "parameters": summary["model"]["parameters"],
        "device": parallel.format_devices(summary["devices"]),
    }


def format_table(result: dict) -> str:
    def percent(v):
        return f"{100 * v:.2f} %"

    rows = [
        (
            f"report 004 ({REFERENCE.source.split(': ')[1]})",
            "one model",
            percent(REFERENCE.accuracy),
            "",
        )
    ]
    rows += [(who, what, percent(accuracy), "") for who, what, accuracy in ANCHORS]
    for run in result["seeds"]:
        rows.append(
            (
                f"ours, seed {run['seed']}",
                f"one model (epoch {run['best_epoch']} of {run['epochs']})",
                percent(run["test_accuracy"]),
                f"{run['train_seconds']:.0f}",
            )
        )
    std = result["accuracy_std"]
    count = len(result["seeds"])
    rows.append(
        (
            "ours, mean of seeds",
            f"{count} model{'s' * (count > 1)}, one at a time",
            percent(result["accuracy_mean"]) + (f" +- {100 * std:.2f}" if std is not None else ""),
            f"{result['train_seconds_mean']:.0f}",
        )
    )
    if result.get("ensemble"):
        ensemble = result["ensemble"]
        rows.append(
            (
                f"ours, ensemble of seeds 0-{ensemble['size'] - 1}",
                "mean softmax",
                percent(ensemble["test_accuracy"]),
                "",
            )
        )
    header = ("", "what", "test accuracy", "train s")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )


def main(argv=None) -> dict:
    parser = build_parser()

    def prepare(args):
        check_at_least_one(args, "seeds", "epochs")
        if args.ensemble < 0 or args.ensemble == 1:
            raise ValueError(f"--ensemble must be 0 (none) or >= 2 seeds, got {args.ensemble}")
        return config_from_args(args, CONFIG, QUICK)

    args, base = start(parser, argv, prepare)
    seeds = args.seeds or (QUICK_SEEDS if args.quick else SEEDS)
    mnist = load_mnist_or_exit(args)
    with training_errors(parser, args):
        runs = [
            train_seed(
                dataclasses.replace(base, seed=seed),
                mnist,
                args.workdir / f"seed{seed}",
                progress=not args.no_progress,
            )
            for seed in range(max(seeds, args.ensemble))
        ]
    rows = [seed_row(s) for s in runs]
    accuracies = [r["test_accuracy"] for r in rows]
    result = {
        "experiment": "best",
        "config": base.to_dict(),
        "seeds": rows,
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "train_seconds_mean": statistics.mean(r["train_seconds"] for r in rows),
        "reference": dataclasses.asdict(REFERENCE),
        "anchors": [dict(zip(("who", "what", "accuracy"), a)) for a in ANCHORS],
    }
    if args.ensemble:
        # One test set for every member: seed 0's (the whole test split without --quick).
        test = data_lib.make_splits(
            mnist, seed=0, train_size=base.train_size, test_size=base.test_size
        ).test
        dirs = [args.workdir / f"seed{seed}" for seed in range(args.ensemble)]
        members = rows[: args.ensemble]
        result["ensemble"] = {
            "size": args.ensemble,
            "seeds": list(range(args.ensemble)),
            **score_ensemble(dirs, test),
            "train_seconds": sum(r["train_seconds"] for r in members),
            "parameters": sum(r["parameters"] for r in members),
        }
    machines = "; ".join(sorted({r["device"] for r in rows}))
    print(
        f"\nMNIST test set "
        f"({len(mnist.test) if base.test_size is None else base.test_size} images); "
        f"each seed selected its checkpoint on its own validation split; trained on {machines}:\n"
    )
    print(format_table(result))
    write_json(args.workdir / "best.json", result)
    print(f"\nbest.json and each seed's run (seed<k>/metrics.json) are in {args.workdir}")
    return result


if __name__ == "__main__":
    main()
