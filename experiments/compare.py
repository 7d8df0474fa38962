"""Report 004's comparison of every classifier: accuracy, F1, time, parameters, over seeds.

    python -m experiments.compare                      # collect the runs under runs/
    python -m experiments.compare --train              # train each model with seeds 0-2 first
    python -m experiments.compare --train --quick      # the same, each experiment's --quick
    python -m experiments.compare --train --models cnn,vit --seeds 5
    python -m experiments.compare --runs-dir results   # the summaries committed in results/

Runs are found by their summaries (metrics.json, or a copy of one under
another name) anywhere under --runs-dir and grouped by
experiment and settings (seed aside): a group gives mean +- std (sample
standard deviation) over its seeds, each seed counted once. Rows whose settings are not the
experiment's defaults say how they differ, e.g. "cnn (epochs=1)"; a run on
--quick's data subsets is "quick" and how it differs from --quick's
settings, e.g. "cnn (quick)" or "cnn (quick, epochs=1)", however its
settings were chosen. --train trains every model of --models: seed k of a
classifier m in runs/compare/<m>/seed<k> (runs/compare/<m>/e<N>_seed<k>
with --epochs N; skipped where that run is finished, resumed where it was
interrupted), and best's seeds as `python -m experiments.best --seeds N`
trains them, in runs/compare/best/seed<k> (runs/compare/best/e<N>/seed<k>
with --epochs N). Writes comparison.json,
comparison.csv and comparison.png (test accuracy against training time, the
report's points hollow) into --out (default runs/compare), and prints the
table with report 004's numbers beside ours.
"""

from __future__ import annotations

import argparse
import pathlib

from experiments import classifier_experiments
from experiments._compare_output import format_table, write_chart, write_csv
from experiments._compare_runs import ensemble_rows, experiment_module, group_runs
from mnist_jax.cli import setup
from mnist_jax.files import write_json
from mnist_jax.flags import DEFAULT_RUNS_DIR, ShowDefaults
from mnist_jax.rundir import find_summaries

# The classifier experiments (experiments.classifier_experiments), which
# --train runs seed by seed; then the experiments beyond the reports, which
# train their own seeds (and their ensemble): --train runs their command.
CLASSIFIERS = classifier_experiments()
BEYOND = ("best",)
COLLECTED = CLASSIFIERS + BEYOND
DEFAULT_SEEDS = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults, prog="python -m experiments.compare", description=__doc__
    )
    add = parser.add_argument
    add(
        "--runs-dir",
        type=pathlib.Path,
        default=DEFAULT_RUNS_DIR,
        help=f"where to look for runs (default {DEFAULT_RUNS_DIR}/)",
    )
    add("--out", type=pathlib.Path, help=f"output folder (default: {DEFAULT_RUNS_DIR}/compare)")
    add("--models", default=",".join(COLLECTED), help=f"comma-separated, of {','.join(COLLECTED)}")
    add(
        "--train",
        action="store_true",
        help="first train the missing seeds of every model of --models, best's through "
        "python -m experiments.best --seeds N",
    )
    add("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1 with --train")
    add(
        "--quick",
        action="store_true",
        help="with --train: each experiment's --quick settings (a smoke test)",
    )
    add("--epochs", type=int, help="with --train: this many epochs (default: each experiment's)")
    add(
        "--data-dir",
        type=pathlib.Path,
        help="with --train: tfds data dir holding mnist/3.0.1 "
        "(default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    add(
        "--idx-dir",
        type=pathlib.Path,
        help="with --train: folder of the four MNIST IDX files (default: none; takes "
        "precedence over --data-dir)",
    )
    add("--no-download", action="store_true", help="with --train: never download MNIST or weights")
    return parser


def parse_models(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in COLLECTED]
    if unknown or not names:
        raise ValueError(
            f"--models: unknown {unknown or 'none given'}; choose from {', '.join(COLLECTED)}"
        )
    return names


def train_missing(
    models: tuple[str, ...],
    seeds: int,
    quick: bool,
    root: pathlib.Path,
    extra_args: list[str],
    epochs: int | None = None,
) -> dict[str, str]:
    """Trains the seeds 0..seeds-1 of each model that are not finished, each
    through its experiment's command, run in this process.

    Args:
      models: experiment names, of COLLECTED.
      seeds: how many seeds of each: 0..seeds-1.
      quick: each experiment's --quick settings.
      root: where the runs go: a classifier's seed k in root/<model>/seed<k>
        (root/<model>/e<epochs>_seed<k> with `epochs`), where a finished run
        is skipped and an interrupted one resumed; best's seeds in
        root/best/seed<k> (root/best/e<epochs>/seed<k>), as experiments.best
        trains them (finished seeds read back, interrupted ones resumed).
      extra_args: flags for every command (--data-dir, --no-download).
      epochs: this many epochs instead of each experiment's.

    Returns:
      {run: why it failed} for those that could not run; the others go on.
    """
    failed = {}
    if epochs is not None:
        extra_args = [*extra_args, "--epochs", str(epochs)]
    for name in models:
        if name in BEYOND:  # Its own command trains its seeds, as experiments.best does.
            workdir = root / name if epochs is None else root / name / f"e{epochs}"
            argv = ["--seeds", str(seeds), "--workdir", str(workdir), "--no-progress", *extra_args]
            run = f"{name} seeds 0-{seeds - 1}" if seeds > 1 else f"{name} seed 0"
            failed |= _run_experiment(name, run, argv + (["--quick"] if quick else []))
            continue
        for seed in range(seeds):
            workdir = root / name / (f"seed{seed}" if epochs is None else f"e{epochs}_seed{seed}")
            if (workdir / "metrics.json").is_file():
                print(f"{name} seed {seed}: finished earlier, in {workdir}")
                continue
            argv = ["--seed", str(seed), "--workdir", str(workdir), "--no-progress", *extra_args]
            if (workdir / "checkpoints").is_dir():
                argv.append("--resume")
            if quick:
                argv.append("--quick")
            failed |= _run_experiment(name, f"{name} seed {seed}", argv)
    return failed


def _run_experiment(name: str, run: str, argv: list[str]) -> dict[str, str]:
    """`python -m experiments.<name> argv`, in this process; {run: why} where it exits."""
    print(f"\n=== {run}: python -m experiments.{name} {' '.join(argv)}", flush=True)
    try:
        experiment_module(name).main(argv)
    except SystemExit as e:  # A model that cannot run (no weights offline) leaves the rest.
        print(f"{run} failed (status {e.code}); going on with the others", flush=True)
        return {run: f"exited with status {e.code}"}
    return {}


def main(argv=None) -> dict:
    setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        models = parse_models(args.models)
    except ValueError as e:
        parser.error(str(e))
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if (args.quick or args.epochs is not None) and not args.train:
        parser.error("--quick and --epochs choose the settings of --train; add --train")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    out = args.out or args.runs_dir / "compare"
    failed = {}
    if args.train:
        extra = [
            *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
            *(["--idx-dir", str(args.idx_dir)] if args.idx_dir else []),
            *(["--no-download"] if args.no_download else []),
        ]
        failed = train_missing(
            models, args.seeds, args.quick, args.runs_dir / "compare", extra, args.epochs
        )

    groups = group_runs(find_summaries(args.runs_dir), models)
    if not groups:
        parser.error(
            f"no finished classifier runs of {', '.join(models)} under {args.runs_dir}; "
            "train some (add --train) or point --runs-dir at them"
        )
    rows = [g.row() for g in groups] + ensemble_rows(args.runs_dir, models)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "comparison.json", {"runs_dir": str(args.runs_dir), "rows": rows, "failed": failed}
    )
    write_csv(rows, out / "comparison.csv")
    write_chart(rows, out / "comparison.png")

    print(
        "\nClassifiers on the MNIST test set, mean +- std over seeds "
        f"(runs under {args.runs_dir}); report 004's numbers (PyTorch, GPU) on the right:\n"
    )
    print(format_table(rows))
    missing = [m for m in models if m not in {g.experiment for g in groups}]
    if missing:
        print(f"\nno runs of: {', '.join(missing)}")
    for run, why in failed.items():
        print(f"failed: {run} ({why})")
    print(f"\ncomparison.json, comparison.csv and comparison.png are in {out}")
    return {"rows": rows, "failed": failed, "out": str(out)}


if __name__ == "__main__":
    main()
