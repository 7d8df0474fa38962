"""The linear autoencoder of report 001: 784 -> 128 (ReLU) -> 784 (sigmoid).

    python -m experiments.linear_ae           # MSE, SGD lr 0.1 momentum 0.9, 20 epochs
    python -m experiments.linear_ae --quick   # 2 epochs on 4,500 images: a smoke test

Pixels in [0, 1], no labels used. Checkpoints every 500 steps and at each
epoch's end; --resume continues exactly. Ends with the test MSE and PSNR and
writes reconstructions.png (originals above reconstructions, also in
TensorBoard). Report 001 publishes no number; our results are in
docs/results.md.
"""

from mnist_jax.cli import run_experiment
from mnist_jax.config import TrainConfig
from mnist_jax.reference import Reference

CONFIG = TrainConfig(
    model="linear_ae",
    task="reconstruct",
    input_norm="unit",
    epochs=20,
    batch_size=64,
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=0.0,
    checkpoint_every_steps=500,
)

QUICK = TrainConfig(
    model="linear_ae",
    task="reconstruct",
    input_norm="unit",
    epochs=2,
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=0.0,
    train_size=5000,
    test_size=1000,
    log_every_steps=10,
    checkpoint_every_steps=20,
)

REFERENCE = Reference(
    source="001 PyTorch Autoencoder (no number published)", device="GPU if available"
)


def main(argv=None) -> dict:
    return run_experiment(
        "linear_ae",
        "Report 001's linear autoencoder on MNIST.",
        CONFIG,
        QUICK,
        REFERENCE,
        argv=argv,
    )


if __name__ == "__main__":
    main()
