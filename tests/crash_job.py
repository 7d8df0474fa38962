"""A short training run for tests/test_faults.py to kill, in a process of its own.

    python -m tests.crash_job WORKDIR [--resume]

Trains the CNN of the tests' short runs on synthetic digits (30 steps, a
checkpoint every 2) through `train.train_and_evaluate`, as an experiment
does, and prints "step N" after every step so that the test can pick the
moment to kill it. Ends as the experiments' command lines do
(`cli.training_errors`): 128 + the signal after SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import pathlib

from mnist_jax.options import RunOptions


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_job")
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    from mnist_jax import models, train
    from mnist_jax.cli import training_errors
    from mnist_jax.data import Splits
    from tests.conftest import small_run_config, synthetic_split

    config = small_run_config(checkpoint_every_steps=2, data_placement="host")
    splits = Splits(
        train=synthetic_split(300, 0), val=synthetic_split(100, 1), test=synthetic_split(100, 2)
    )
    # A run killed before its first checkpoint was finished has nothing to
    # resume: --resume starts it again, as a job script that always passes it expects.
    with training_errors(parser, args):
        train.train_and_evaluate(
            config,
            models.get_model("cnn"),
            splits,
            args.workdir,
            RunOptions(
                experiment="crash_job",
                resume=args.resume,
                progress=False,
                on_step=lambda step: print(f"step {step}", flush=True),
            ),
        )
    print("done", flush=True)


if __name__ == "__main__":
    main()
