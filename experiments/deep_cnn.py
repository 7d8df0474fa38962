"""The deep CNN of report 004 ("Faster R-CNN adapted" into a classifier).

    python -m experiments.deep_cnn           # the report's settings: 10 epochs, batch 64
    python -m experiments.deep_cnn --quick   # 1 epoch on 900 images: a smoke test

Report: 99.40 % test accuracy, F1 0.9940, 101.16 s for 10 epochs on a GPU.
Our results are in docs/results.md.
"""

from mnist_jax.cli import run_experiment
from mnist_jax.config import TrainConfig
from mnist_jax.reference import Reference

CONFIG = TrainConfig(
    model="deep_cnn", epochs=10, batch_size=64, learning_rate=1e-3, weight_decay=1e-5
)

QUICK = TrainConfig(
    model="deep_cnn",
    epochs=1,
    train_size=1000,
    test_size=500,
    log_every_steps=5,
    checkpoint_every_steps=10,
)

REFERENCE = Reference(
    source="004 Lab 2, PyTorch", accuracy=0.9940, f1_macro=0.9940, train_seconds=101.16
)


def main(argv=None) -> dict:
    return run_experiment(
        "deep_cnn", "Report 004's deep CNN on MNIST.", CONFIG, QUICK, REFERENCE, argv=argv
    )


if __name__ == "__main__":
    main()
