"""The simple CNN of report 000 (two conv layers, max-pooling, dropout, one FC layer).

    python -m experiments.simple_cnn           # 10 epochs, Adam 1e-3, batch 64
    python -m experiments.simple_cnn --quick   # 2 epochs on 1,800 images: a smoke test

Report: 99.10 % test accuracy, test loss 0.0264 (its epochs and optimizer
come from a W&B sweep it does not list; these are the CNN's settings).
Our results are in docs/results.md.
"""

from mnist_jax.cli import run_experiment
from mnist_jax.config import TrainConfig
from mnist_jax.reference import Reference

CONFIG = TrainConfig(
    model="simple_cnn", epochs=10, batch_size=64, learning_rate=1e-3, weight_decay=0.0
)

QUICK = TrainConfig(
    model="simple_cnn",
    epochs=2,
    weight_decay=0.0,
    train_size=2000,
    test_size=1000,
    log_every_steps=10,
    checkpoint_every_steps=20,
)

REFERENCE = Reference(
    source="000 CNN and Autoencoders, PyTorch",
    accuracy=0.9910,
    loss=0.0264,
    device="GPU (not stated)",
)


def main(argv=None) -> dict:
    return run_experiment(
        "simple_cnn", "Report 000's simple CNN on MNIST.", CONFIG, QUICK, REFERENCE, argv=argv
    )


if __name__ == "__main__":
    main()
